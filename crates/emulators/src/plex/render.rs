//! One tree, two wire formats.
//!
//! Handlers build a [`Node`] tree once; it is written as XML (all attribute
//! values strings, booleans `1`/`0`) or as JSON (typed numbers and booleans,
//! children grouped into arrays named after their element), so the two
//! formats cannot drift apart.

use std::borrow::Cow;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, Event};
use quick_xml::name::QName;
use quick_xml::Writer;
use serde_json::{Map, Value};

/// An attribute value with the type Plex gives it in JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Val {
    fn xml(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Val::Str(s) => Value::String(s.clone()),
            Val::Int(i) => Value::from(*i),
            Val::Float(f) => Value::from(*f),
            Val::Bool(b) => Value::Bool(*b),
        }
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Str(s.to_string())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Str(s)
    }
}
impl From<&String> for Val {
    fn from(s: &String) -> Self {
        Val::Str(s.clone())
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Val::Int(i)
    }
}
impl From<u64> for Val {
    fn from(i: u64) -> Self {
        Val::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Val {
    fn from(i: usize) -> Self {
        Val::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Val {
    fn from(b: bool) -> Self {
        Val::Bool(b)
    }
}
impl From<f64> for Val {
    fn from(f: f64) -> Self {
        Val::Float(f)
    }
}

/// An element: XML name, JSON array name, attributes and children.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub xml_name: &'static str,
    pub json_name: &'static str,
    pub attrs: Vec<(&'static str, Val)>,
    pub children: Vec<Node>,
}

impl Node {
    /// An element whose JSON array has the same name as its XML element.
    pub fn new(name: &'static str) -> Self {
        Self::named(name, name)
    }

    /// An element named differently in JSON (`Video` items are `Metadata`).
    pub fn named(xml_name: &'static str, json_name: &'static str) -> Self {
        Self { xml_name, json_name, attrs: Vec::new(), children: Vec::new() }
    }

    pub fn attr(mut self, name: &'static str, value: impl Into<Val>) -> Self {
        self.attrs.push((name, value.into()));
        self
    }

    /// Adds the attribute only when there is a value, as Plex omits unset fields.
    pub fn opt_attr<V: Into<Val>>(self, name: &'static str, value: Option<V>) -> Self {
        match value {
            Some(v) => self.attr(name, v),
            None => self,
        }
    }

    pub fn child(mut self, child: Node) -> Self {
        self.children.push(child);
        self
    }

    pub fn children(mut self, children: impl IntoIterator<Item = Node>) -> Self {
        self.children.extend(children);
        self
    }

    /// Serializes as an XML document.
    pub fn to_xml(&self) -> String {
        let mut writer = Writer::new(Vec::new());
        writer
            .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
            .expect("writing to a Vec cannot fail");
        writer.get_mut().push(b'\n');
        self.write_xml(&mut writer);
        String::from_utf8(writer.into_inner()).expect("XML writer emits UTF-8")
    }

    fn write_xml(&self, writer: &mut Writer<Vec<u8>>) {
        let mut start = BytesStart::new(self.xml_name);
        for (name, value) in &self.attrs {
            // Built from raw parts: the value is escaped once, by us, so that
            // newlines and tabs survive too.
            start.push_attribute(Attribute { key: QName(name), value: Cow::Owned(xml_attr_escape(&value.xml())) });
        }
        let event = if self.children.is_empty() { Event::Empty(start) } else { Event::Start(start) };
        writer.write_event(event).expect("writing to a Vec cannot fail");
        if !self.children.is_empty() {
            for child in &self.children {
                child.write_xml(writer);
            }
            writer.write_event(Event::End(BytesEnd::new(self.xml_name))).expect("writing to a Vec cannot fail");
        }
    }

    /// Serializes as Plex JSON: `{"MediaContainer": {…}}` for the root.
    pub fn to_json(&self) -> Value {
        let mut root = Map::new();
        root.insert(self.json_name.to_string(), self.json_object());
        Value::Object(root)
    }

    fn json_object(&self) -> Value {
        let mut map = Map::new();
        for (name, value) in &self.attrs {
            map.insert((*name).to_string(), value.json());
        }
        for child in &self.children {
            let entry = map.entry(child.json_name.to_string()).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                list.push(child.json_object());
            }
        }
        Value::Object(map)
    }
}

/// quick-xml escapes `<`, `>`, `&`, quotes; Plex also escapes newlines and tabs
/// inside attributes so that they survive attribute-value normalization.
fn xml_attr_escape(s: &str) -> String {
    let escaped = quick_xml::escape::escape(s);
    escaped.replace('\n', "&#10;").replace('\r', "&#13;").replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Node {
        Node::new("MediaContainer").attr("size", 1usize).attr("allowSync", true).child(
            Node::named("Video", "Metadata")
                .attr("ratingKey", "7")
                .attr("title", "A & B <\"c\">\nline")
                .child(Node::new("Genre").attr("tag", "x")),
        )
    }

    #[test]
    fn xml_has_string_attributes_and_escapes() {
        let xml = sample().to_xml();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(xml.contains("<MediaContainer size=\"1\" allowSync=\"1\">"));
        assert!(xml.contains("title=\"A &amp; B &lt;&quot;c&quot;&gt;&#10;line\""));
        assert!(xml.contains("<Genre tag=\"x\"/>"));
    }

    #[test]
    fn json_types_and_child_arrays() {
        let json = sample().to_json();
        let mc = &json["MediaContainer"];
        assert_eq!(mc["size"], Value::from(1));
        assert_eq!(mc["allowSync"], Value::Bool(true));
        assert_eq!(mc["Metadata"][0]["ratingKey"], Value::from("7"));
        assert_eq!(mc["Metadata"][0]["title"], Value::from("A & B <\"c\">\nline"));
        assert_eq!(mc["Metadata"][0]["Genre"][0]["tag"], Value::from("x"));
    }
}

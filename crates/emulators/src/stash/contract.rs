//! Stash's real GraphQL schema as the contract for every document the
//! emulator is sent. The emulator's own schema is a hand-written subset; a
//! document that only it accepts (a renamed field, a wrong argument type)
//! would let a test pass that fails against a real Stash, so such documents
//! are refused the way Stash's gqlgen refuses them: HTTP 422 with `errors`.

use apollo_compiler::schema::ExtendedType;
use apollo_compiler::validation::Valid;
use apollo_compiler::{ast, Schema};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where Stash's schema (`graphql/schema/**/*.graphql`) is read from.
pub const SCHEMA_DIR_ENV: &str = "STASH_SCHEMA_DIR";

/// Stash's schema, parsed once per process, and the documents already
/// found valid (tests send the same few documents thousands of times).
pub struct RealSchema {
    schema: Valid<Schema>,
    valid: Mutex<HashSet<String>>,
}

impl RealSchema {
    /// The schema from [`SCHEMA_DIR_ENV`], else `third_party/stash-schema` in
    /// this repository; an error says where it looked.
    pub fn get() -> Result<&'static RealSchema, String> {
        static SCHEMA: OnceLock<Result<RealSchema, String>> = OnceLock::new();
        SCHEMA.get_or_init(|| Self::load(&schema_dir())).as_ref().map_err(Clone::clone)
    }

    fn load(dir: &Path) -> Result<Self, String> {
        let mut files = Vec::new();
        collect_graphql(dir, &mut files)
            .map_err(|e| format!("Stash's schema: cannot read {} ({e}); set {SCHEMA_DIR_ENV}", dir.display()))?;
        if files.is_empty() {
            return Err(format!("Stash's schema: no .graphql files under {}; set {SCHEMA_DIR_ENV}", dir.display()));
        }
        files.sort();
        let mut builder = Schema::builder();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            builder = builder.parse(text, file);
        }
        let schema = builder.build().and_then(Schema::validate).map_err(|e| format!("Stash's schema: {}", e.errors))?;
        Ok(Self { schema, valid: Mutex::default() })
    }

    /// `Ok` when Stash would accept `document`; else gqlgen's error code
    /// (`GRAPHQL_PARSE_FAILED` or `GRAPHQL_VALIDATION_FAILED`) and the errors.
    pub fn check(&self, document: &str) -> Result<(), (&'static str, String)> {
        if self.valid.lock().contains(document) {
            return Ok(());
        }
        let ast = ast::Document::parse(document, "request.graphql")
            .map_err(|e| ("GRAPHQL_PARSE_FAILED", e.errors.to_string()))?;
        ast.to_executable_validate(&self.schema).map_err(|e| ("GRAPHQL_VALIDATION_FAILED", e.errors.to_string()))?;
        self.valid.lock().insert(document.to_string());
        Ok(())
    }

    /// Every field or argument of `sdl` (another server's schema) whose type
    /// differs from Stash's, or that Stash's type does not have; types Stash
    /// does not have at all are listed too. Empty when `sdl` is a faithful
    /// subset.
    pub fn differences(&self, sdl: &str) -> Result<Vec<String>, String> {
        let other = Schema::parse(sdl, "emulator.graphql").map_err(|e| e.errors.to_string())?;
        let mut out = Vec::new();
        for (name, ty) in &other.types {
            if ty.is_built_in() {
                continue;
            }
            let real_name = root_in(&self.schema, &other, name);
            let Some(real) = self.schema.types.get(real_name.unwrap_or(name.as_str())) else {
                out.push(format!("type {name} is not in Stash's schema"));
                continue;
            };
            compare_type(name, ty, real, &mut out);
        }
        Ok(out)
    }
}

/// The name `real` gives the root operation type that `other` calls `name`
/// (`QueryRoot` → `Query`), if `name` is one.
fn root_in<'a>(real: &'a Schema, other: &Schema, name: &str) -> Option<&'a str> {
    let (ours, theirs) = (&other.schema_definition, &real.schema_definition);
    [(&ours.query, &theirs.query), (&ours.mutation, &theirs.mutation), (&ours.subscription, &theirs.subscription)]
        .into_iter()
        .find(|(o, _)| o.as_ref().is_some_and(|o| o.name == name))
        .and_then(|(_, t)| t.as_ref().map(|t| t.name.as_str()))
}

fn compare_type(name: &str, ours: &ExtendedType, real: &ExtendedType, out: &mut Vec<String>) {
    match (ours, real) {
        (ExtendedType::Object(o), ExtendedType::Object(r)) => {
            for (field, def) in &o.fields {
                let what = format!("{name}.{field}");
                let Some(real) = r.fields.get(field) else {
                    out.push(format!("{what} is not in Stash's schema"));
                    continue;
                };
                if !same_type(&what, &def.ty, &real.ty, out) {
                    continue;
                }
                for arg in &def.arguments {
                    let what = format!("{what}({})", arg.name);
                    match real.arguments.iter().find(|a| a.name == arg.name) {
                        None => out.push(format!("{what} is not in Stash's schema")),
                        Some(r) => {
                            same_type(&what, &arg.ty, &r.ty, out);
                        }
                    }
                }
            }
        }
        (ExtendedType::InputObject(o), ExtendedType::InputObject(r)) => {
            for (field, def) in &o.fields {
                let what = format!("{name}.{field}");
                match r.fields.get(field) {
                    None => out.push(format!("{what} is not in Stash's schema")),
                    Some(real) => {
                        same_type(&what, &def.ty, &real.ty, out);
                    }
                }
            }
        }
        (ExtendedType::Enum(o), ExtendedType::Enum(r)) => {
            for value in o.values.keys() {
                if !r.values.contains_key(value) {
                    out.push(format!("{name}.{value} is not in Stash's schema"));
                }
            }
        }
        (ExtendedType::Scalar(_), ExtendedType::Scalar(_)) => {}
        (ExtendedType::Union(o), ExtendedType::Union(r)) => {
            for member in &o.members {
                if !r.members.contains(member) {
                    out.push(format!("{name} has {} here, not in Stash's schema", member.name));
                }
            }
        }
        _ => out.push(format!("{name} is a different kind of type in Stash's schema")),
    }
}

/// Whether `what` (a field or an argument) has Stash's type; reports it if not.
fn same_type(
    what: &str,
    ours: &apollo_compiler::ast::Type,
    real: &apollo_compiler::ast::Type,
    out: &mut Vec<String>,
) -> bool {
    let same = ours == real;
    if !same {
        out.push(format!("{what}: {ours} here, {real} in Stash"));
    }
    same
}

fn schema_dir() -> PathBuf {
    std::env::var_os(SCHEMA_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../third_party/stash-schema"))
}

fn collect_graphql(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_graphql(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "graphql") {
            out.push(path);
        }
    }
    Ok(())
}

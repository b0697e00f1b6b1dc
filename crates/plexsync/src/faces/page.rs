//! The daemon's status page (`/`) as HTML, from what the daemon gathered:
//! health, the queue by class, dead letters with their reasons, one
//! scene's state and trace, the last deliveries and the page's buttons.
//!
//! The templates escape every value they are given (a scene's error, a
//! trace, a message from Stash or Plex), so none of them adds markup to
//! the page. Plain HTML: no script, nothing from elsewhere, only the inline
//! style the daemon's content security policy allows (`web.rs`).

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::store::{DeliveredItem, RowInfo, SceneState};

/// The page's own style, the only one it has.
const STYLE: &str = "body{font:15px system-ui,sans-serif;margin:2em;max-width:60em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
.inline{display:inline-block;margin-right:.5em}pre.trace{background:#f4f4f4;padding:.6em;white-space:pre-wrap}.ok{color:#176117;font-weight:bold}.bad{color:#a11;font-weight:bold}";

/// What the page shows once Stash has answered.
pub(crate) struct Status<'a> {
    /// Whether delivery works (`/healthz` says 200).
    pub healthy: bool,
    /// `/healthz`'s body: its `reasons` and `queue` counts are shown.
    pub health: &'a Value,
    /// The tables of queue rows, each with its title.
    pub lists: Vec<(&'static str, Vec<RowInfo>)>,
    /// The scene asked for with `?scene=`.
    pub scene: Option<Scene>,
    /// The last deliveries, newest first.
    pub delivered: &'a [DeliveredItem],
    /// With the metadata provider on: its URL, or why it is not known.
    pub provider: Option<Result<String, String>>,
    /// The key every form carries.
    pub form_key: &'a str,
}

/// The scene asked for with `?scene=`.
pub(crate) enum Scene {
    /// Not a Stash scene id.
    NotAnId,
    Shown(Box<SceneView>),
}

/// A scene asked for by its id.
pub(crate) struct SceneView {
    pub id: String,
    /// Where it stands in the queue and its Plex items, or why that cannot
    /// be read.
    pub state: Result<SceneState, String>,
    /// How matching decides today (the `explain` trace, ending with the
    /// decision), or why it cannot be told now.
    pub trace: Result<Vec<String>, String>,
}

/// The page until Stash answers: what the daemon waits for.
pub(crate) fn waiting(error: &str) -> String {
    page(html! {
        h1 { "PlexSync" }
        p class="bad" { "Not delivering" }
        ul { li { "stash_unreachable: waiting for Stash: " (error) } }
    })
}

/// The status page.
pub(crate) fn status(s: &Status<'_>) -> String {
    let q = &s.health["queue"];
    page(html! {
        h1 { "PlexSync" }
        p class=(if s.healthy { "ok" } else { "bad" }) {
            (if s.healthy { "Delivering" } else { "Not delivering" })
        }
        ul {
            @for reason in s.health["reasons"].as_array().into_iter().flatten() {
                li { (reason.as_str().unwrap_or("")) }
            }
        }
        h2 { "Queue" }
        table {
            tr { th { "waiting" } th { "due now" } th { "dead letters" } th { "synced scenes" } }
            tr {
                @for key in ["pending", "due_now", "dead", "synced"] {
                    td { (q[key].to_string()) }
                }
            }
        }
        @for (title, list) in &s.lists {
            h2 { (title) " (" (list.len()) ")" }
            @if !list.is_empty() {
                table {
                    tr { th { "scene" } th { "class" } th { "tries" } th { "last error" } }
                    @for r in list {
                        tr {
                            td { (r.scene_id) }
                            td { (r.error_class.as_deref().unwrap_or("new")) }
                            td { (r.attempts) }
                            td { (r.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Find a scene" }
        form method="get" action="/" {
            label { "Scene id " input name="scene" inputmode="numeric" required; }
            " "
            button { "Show" }
        }
        @if let Some(scene) = &s.scene {
            (scene_section(scene))
        }
        h2 { "Last deliveries" }
        @if s.delivered.is_empty() {
            p { "None yet." }
        } @else {
            table {
                tr { th { "scene" } th { "Plex item" } th { "when" } }
                @for d in s.delivered {
                    tr {
                        td { a href={ "/?scene=" (d.scene_id) } { (d.scene_id) } }
                        td { (d.rating_key) }
                        td { (when(d.synced_at)) }
                    }
                }
            }
        }
        @if let Some(url) = &s.provider {
            h2 { "Metadata provider" }
            @match url {
                Ok(url) => {
                    p {
                        "Paste this URL into Plex (Settings → Metadata Agents → Add Provider); anyone who has it \
                         can read what Plex shows of your scenes:"
                    }
                    pre class="trace" { (url) }
                }
                Err(e) => p class="bad" { (e) },
            }
        }
        h2 { "Actions" }
        form method="post" action="/actions/sync" {
            input type="hidden" name="key" value=(s.form_key);
            label { "Scene id " input name="scene" inputmode="numeric" required; }
            " "
            button { "Sync now" }
        }
        @for (action, label) in
            [("retry-dead", "Retry dead letters"), ("purge-dead", "Purge dead letters"), ("reconcile", "Reconcile all")]
        {
            form method="post" action={ "/actions/" (action) } class="inline" {
                input type="hidden" name="key" value=(s.form_key);
                button { (label) }
            }
        }
    })
}

/// One scene: where it stands in the queue, its Plex items, and how
/// matching decides today.
fn scene_section(scene: &Scene) -> Markup {
    let Scene::Shown(view) = scene else {
        return html! { p class="bad" { "A Stash scene id is digits only." } };
    };
    let SceneView { id, state, trace } = &**view;
    html! {
        h2 id="scene" { "Scene " (id) }
        @match state {
            Ok(state) => {
                p {
                    "State: " b { (state.state.replace('_', " ")) }
                    @if let Some(row) = &state.row {
                        " (" (row.error_class.as_deref().unwrap_or("new")) "; " (row.attempts) " tries; "
                        (row.last_error.as_deref().unwrap_or("not tried yet")) ")"
                    }
                }
                @for item in &state.items {
                    p {
                        "Plex item " (item.rating_key) " (library section " (item.section) "), written "
                        (when(item.synced_at))
                    }
                }
            }
            Err(e) => p class="bad" { (e) },
        }
        @match trace {
            Ok(lines) => pre class="trace" { (lines.join("\n")) },
            Err(e) => p class="bad" { "Cannot explain it now: " (e) },
        }
    }
}

/// The document around a page's body.
fn page(body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "PlexSync" }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

/// A delivery time as UTC text.
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOSTILE: &str = "<script>alert(1)</script>\"'&";
    const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;";

    fn row(scene_id: &str) -> RowInfo {
        RowInfo {
            scene_id: scene_id.into(),
            state: "dead".into(),
            attempts: 3,
            error_class: Some(HOSTILE.into()),
            last_error: Some(HOSTILE.into()),
            next_due: 0,
        }
    }

    fn hostile_page(scene: Scene, provider: Result<String, String>) -> String {
        let health = json!({
            "reasons": [HOSTILE],
            "queue": {"pending": 1, "due_now": 0, "dead": 1, "synced": 1},
        });
        let delivered = [DeliveredItem {
            scene_id: HOSTILE.into(),
            rating_key: HOSTILE.into(),
            section: HOSTILE.into(),
            synced_at: 0,
        }];
        status(&Status {
            healthy: false,
            health: &health,
            lists: vec![("Waiting", vec![row("7")]), ("Dead letters", vec![row(HOSTILE)])],
            scene: Some(scene),
            delivered: &delivered,
            provider: Some(provider),
            form_key: HOSTILE,
        })
    }

    /// No markup other than the page's own: it has no script at all, and
    /// every hostile value shows as the text it is.
    fn assert_escaped(html: &str, at_least: usize) {
        assert!(!html.to_lowercase().contains("<script"), "{html}");
        assert!(!html.contains(HOSTILE), "{html}");
        assert!(html.matches(ESCAPED).count() >= at_least, "{html}");
    }

    #[test]
    fn hostile_text_is_escaped_everywhere_on_the_page() {
        let state = SceneState {
            scene_id: "7".into(),
            state: "dead",
            row: Some(row("7")),
            items: vec![DeliveredItem {
                scene_id: "7".into(),
                rating_key: HOSTILE.into(),
                section: HOSTILE.into(),
                synced_at: 0,
            }],
        };
        let shown = Scene::Shown(Box::new(SceneView {
            id: "7".into(),
            state: Ok(state),
            trace: Ok(vec![HOSTILE.into(), HOSTILE.into()]),
        }));
        let html = hostile_page(shown, Ok(HOSTILE.into()));
        // Reasons, both tables, the scene's row, items and trace, the
        // deliveries (link, text, item), the provider's URL, the form keys.
        assert_escaped(&html, 20);
        assert!(html.contains(&format!("name=\"key\" value=\"{ESCAPED}\"")), "{html}");
        assert!(html.contains(&format!("<a href=\"/?scene={ESCAPED}\">{ESCAPED}</a>")), "{html}");
        assert!(html.contains(&format!("<pre class=\"trace\">{ESCAPED}\n{ESCAPED}</pre>")), "{html}");

        let failed = Scene::Shown(Box::new(SceneView {
            id: "7".into(),
            state: Err(HOSTILE.into()),
            trace: Err(HOSTILE.into()),
        }));
        let html = hostile_page(failed, Err(HOSTILE.into()));
        assert_escaped(&html, 10);
        assert!(html.contains(&format!("<p class=\"bad\">Cannot explain it now: {ESCAPED}</p>")), "{html}");

        assert_escaped(&waiting(HOSTILE), 1);
    }

    #[test]
    fn the_page_keeps_its_structure() {
        let health = json!({"reasons": [], "queue": {"pending": 2, "due_now": 1, "dead": 0, "synced": 5}});
        let html = status(&Status {
            healthy: true,
            health: &health,
            lists: vec![("Waiting", vec![]), ("Dead letters", vec![])],
            scene: Some(Scene::NotAnId),
            delivered: &[],
            provider: None,
            form_key: "k3y",
        });
        for part in [
            "<title>PlexSync</title><style>body{font:15px system-ui,sans-serif;",
            "<h1>PlexSync</h1><p class=\"ok\">Delivering</p><ul></ul>",
            "<tr><td>2</td><td>1</td><td>0</td><td>5</td></tr></table><h2>Waiting (0)</h2><h2>Dead letters (0)</h2>",
            "<form method=\"get\" action=\"/\"><label>Scene id <input name=\"scene\" inputmode=\"numeric\" required></label> <button>Show</button></form>",
            "<p class=\"bad\">A Stash scene id is digits only.</p><h2>Last deliveries</h2><p>None yet.</p><h2>Actions</h2>",
            "<form method=\"post\" action=\"/actions/sync\"><input type=\"hidden\" name=\"key\" value=\"k3y\">",
            "<form method=\"post\" action=\"/actions/reconcile\" class=\"inline\"><input type=\"hidden\" name=\"key\" value=\"k3y\"><button>Reconcile all</button></form></body></html>",
        ] {
            assert!(html.contains(part), "{part}\nin\n{html}");
        }
        assert!(!html.contains("Metadata provider"));
    }
}

// PlexSync's part of Stash's UI: a badge with the scene's Plex state on
// the scene page (with "Sync now" and "Explain") and on scene cards.
//
// Stash (v0.28.0 or later for the scene page's panel) loads this file
// through the manifest's `ui.javascript` and gives it `window.PluginApi`;
// there is no global React. Every answer comes from PlexSync's queue
// database through `runPluginOperation` (mode `scene_status`): no Plex
// request, so a page of cards costs a few short plugin runs, not one per
// card.
(function () {
  "use strict";
  const api = window.PluginApi;
  if (!api || !api.React || !api.patch) {
    return;
  }
  const React = api.React;
  const h = React.createElement;
  // The plugin id is the manifest's file name, and Stash serves this script
  // at `<base>/plugin/<id>/javascript`: read it from there, so a renamed
  // manifest still reaches its own plugin.
  const PLUGIN_ID = (function () {
    const src = document.currentScript && document.currentScript.src;
    const found = src && /\/plugin\/([^/]+)\/javascript$/.exec(new URL(src).pathname);
    return found ? decodeURIComponent(found[1]) : "PlexSync";
  })();
  // A card asks again at most this often (ms); the page asks on each visit.
  const FRESH_FOR = 15000;
  const BATCH_WAIT = 40;
  // The plugin answers at most 500 scenes a run; Stash shows up to 1000
  // cards a page (more with a custom page size).
  const BATCH_MAX = 250;

  const OPERATION =
    "mutation PlexSyncOperation($plugin_id: ID!, $args: Map) {" +
    " runPluginOperation(plugin_id: $plugin_id, args: $args) }";

  // Runs a PlexSync mode through Stash; resolves to its output, rejects with
  // Stash's error message.
  async function operation(args) {
    const response = await fetch(new URL("graphql", document.baseURI), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: OPERATION, variables: { plugin_id: PLUGIN_ID, args: args } }),
    });
    const body = await response.json().catch(() => null);
    if (!body) {
      throw new Error("Stash answered " + response.status);
    }
    if (body.errors && body.errors.length) {
      throw new Error(body.errors.map((e) => e.message).join("; "));
    }
    return body.data ? body.data.runPluginOperation : null;
  }

  // Scene states, fetched in batches: cards rendered together share one
  // plugin run. Listeners hear about every answer.
  const cache = new Map();
  const listeners = new Set();
  const notify = () => listeners.forEach((listen) => listen());
  let waiting = new Set();
  let timer = null;

  function request(id, force) {
    const known = cache.get(id);
    if (!force && known && Date.now() - known.at < FRESH_FOR) {
      return;
    }
    waiting.add(id);
    if (timer === null) {
      timer = setTimeout(flush, BATCH_WAIT);
    }
  }

  // Sends the waiting ids in runs the plugin accepts, one after another;
  // each run's badges are drawn as soon as it answers.
  async function flush() {
    const ids = Array.from(waiting);
    waiting = new Set();
    timer = null;
    for (let i = 0; i < ids.length; i += BATCH_MAX) {
      const part = ids.slice(i, i + BATCH_MAX);
      let answer;
      try {
        const out = expect(await operation({ mode: "scene_status", scene_ids: part }), "scenes");
        const byId = new Map(out.scenes.map((s) => [s.scene_id, s]));
        answer = (id) => ({ state: byId.get(id), now: out.now, down: out.plex_down_since, at: Date.now() });
      } catch (e) {
        answer = () => ({ error: String(e.message || e), at: Date.now() });
      }
      part.forEach((id) => cache.set(id, answer(id)));
      notify();
    }
  }

  // PlexSync answers an object; anything else (another program's text, an
  // empty answer) is an error to show, never "not synced".
  function expect(out, list) {
    const ok = out && typeof out === "object" && (!list || Array.isArray(out[list]));
    if (!ok) {
      throw new Error("the plugin's answer is not PlexSync's: " + JSON.stringify(out).slice(0, 160));
    }
    return out;
  }

  function useSceneState(id) {
    const [, redraw] = React.useState(0);
    React.useEffect(() => {
      const listen = () => redraw((n) => n + 1);
      listeners.add(listen);
      request(id, false);
      return () => listeners.delete(listen);
    }, [id]);
    return cache.get(id);
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 86400) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " days";
  }

  // [css class, short label, longer explanation] for a state.
  function describe(entry) {
    if (!entry) return ["pending", "Plex …", "asking PlexSync"];
    if (entry.error) return ["error", "Plex ?", "PlexSync could not answer: " + entry.error];
    const s = entry.state;
    const row = s && s.row;
    const why = row && row.last_error ? ": " + row.last_error : "";
    switch (s && s.state) {
      case "synced": {
        const item = s.items[0];
        const items = s.items.map((i) => i.rating_key).join(", ");
        return ["synced", "In Plex", "synced " + ago(entry.now - item.synced_at) + " ago to item " + items];
      }
      case "waiting": {
        if (entry.down) {
          return ["waiting", "Plex: waiting", "waiting: Plex has not answered for " + ago(entry.now - entry.down) + why];
        }
        const next = row.next_due > entry.now ? "next try in " + ago(row.next_due - entry.now) : "due now";
        const cls = row.error_class ? row.error_class + ", " : "";
        return ["waiting", "Plex: waiting", "waiting (" + cls + next + ")" + why];
      }
      case "not_in_plex":
        return ["missing", "Not in Plex", "not in Plex yet; tried " + row.attempts + " times" + why];
      case "ambiguous":
        return ["ambiguous", "Plex: ambiguous", "several Plex items could be this scene" + why];
      case "dead":
        return ["dead", "Plex: dead letter", "dead letter (" + (row.error_class || "error") + ")" + why];
      default:
        return ["unknown", "Not synced", "PlexSync has not delivered this scene yet"];
    }
  }

  function Badge(props) {
    const entry = useSceneState(props.id);
    const [cls, label, text] = describe(entry);
    return h(
      "span",
      { className: "plexsync-badge plexsync-" + cls, title: text, "data-plexsync-state": cls },
      label
    );
  }

  // The scene page's panel: the badge, what it means, and the two actions.
  // It is keyed by the scene: stepping to the next scene of a queue keeps
  // Stash's page mounted, and must not carry this scene's state over.
  function Panel(props) {
    const id = props.id;
    const entry = useSceneState(id);
    const [cls, label, text] = describe(entry);
    const [busy, setBusy] = React.useState(false);
    const [message, setMessage] = React.useState(null);
    const [trace, setTrace] = React.useState(null);
    const mounted = React.useRef(true);
    React.useEffect(() => () => (mounted.current = false), []);

    async function act(args, then) {
      setBusy(true);
      setMessage(null);
      let out, failed;
      try {
        out = expect(await operation(args));
      } catch (e) {
        failed = String(e.message || e);
      }
      // An answer that arrives after a step to another scene is dropped.
      if (!mounted.current) return;
      if (failed !== undefined) setMessage(failed);
      else then(out);
      setBusy(false);
    }
    const syncNow = () =>
      act({ mode: "sync_scene", scene_id: id }, (out) => {
        setMessage(out.message);
        // The answer carries the scene's new state; ask again once the
        // worker has had time to deliver it.
        if (out.scene) {
          cache.set(id, { state: out.scene, now: out.now, at: Date.now() });
          notify();
        }
        setTimeout(() => request(id, true), 3000);
      });
    const explain = () =>
      act({ mode: "explain", scene_id: id }, (out) => {
        // The trace ends with the decision line.
        setTrace((out.trace || []).join("\n"));
      });

    return h(
      "div",
      { className: "plexsync-panel", "data-plexsync-scene": id },
      h("span", { className: "plexsync-badge plexsync-" + cls, "data-plexsync-state": cls }, label),
      h("span", { className: "plexsync-text" }, text),
      h("button", { type: "button", className: "btn btn-secondary btn-sm", disabled: busy, onClick: syncNow }, "Sync now"),
      h("button", { type: "button", className: "btn btn-secondary btn-sm", disabled: busy, onClick: explain }, "Explain"),
      message ? h("div", { className: "plexsync-message" }, message) : null,
      trace !== null ? h("pre", { className: "plexsync-trace" }, trace) : null
    );
  }

  // The scene the page shows: its props' scene or, when another plugin's
  // `before` passed on only `{children}` (as Stash's example does), the
  // page's address under Stash's base URL (`<base>scenes/<id>`).
  function pageSceneId(props) {
    if (props && props.scene && props.scene.id != null) return String(props.scene.id);
    const base = new URL(document.baseURI).pathname;
    const path = window.location.pathname;
    const found = path.startsWith(base) && /^scenes\/(\d+)\/?$/.exec(path.slice(base.length));
    return found ? found[1] : null;
  }

  // React calls a component with (props, context); `after` gets the result
  // last.
  function lastOf(args) {
    return args[args.length - 1];
  }

  // The panel at the top of the scene page's tab content: its own row under
  // the tab links, whichever tab is open.
  api.patch.after("ScenePage.TabContent", function () {
    const result = lastOf(arguments);
    const id = pageSceneId(arguments[0]);
    if (!id) return result;
    return h(React.Fragment, null, h(Panel, { id, key: "plexsync-" + id }), result);
  });

  // A card's badge, among its overlays (inside `.video-section`).
  api.patch.after("SceneCard.Overlays", function () {
    const props = arguments[0];
    const result = lastOf(arguments);
    const scene = props && props.scene;
    if (!scene || scene.id == null) return result;
    const id = String(scene.id);
    return h(React.Fragment, null, result, h(Badge, { id, key: "plexsync-" + id }));
  });
})();

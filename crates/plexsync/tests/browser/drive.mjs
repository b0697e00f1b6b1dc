// Loads a page in headless Chromium, follows a list of steps, and prints
// what a person would see: {"text": the page's visible text, "html": its
// DOM, "frames": its frames' addresses and text, "boxes": where `box:`
// steps found their elements, "problems": errors seen}.
// Used by crates/plexsync/tests/it/browser.rs.
//
//   node drive.mjs <url> [wait:<css>] [click:<css>] [fill:<css>=<text>] [gone:<css>] [none:<css>]
//                        [box:<css>] [shot:<png>] ...
//
// `none` fails when anything matches now; `box` records the first match's
// bounding box (page coordinates) under `boxes[<css>]`, null when none.
//
// CHROMIUM names the browser (default /usr/bin/chromium); SESSION_COOKIE
// (`name=value`) is set for the page's origin first.
// A step that does not happen within 15 s fails with the page's text.
import { chromium } from "playwright-core";

const [url, ...steps] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
// A logged-in person's session (`SESSION_COOKIE` is `name=value`).
if (process.env.SESSION_COOKIE) {
  const at = process.env.SESSION_COOKIE.indexOf("=");
  const [name, value] = [process.env.SESSION_COOKIE.slice(0, at), process.env.SESSION_COOKIE.slice(at + 1)];
  await context.addCookies([{ name, value, url }]);
}
const page = await context.newPage();
const problems = [];
const boxes = {};
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("console", (m) => {
  // Failed loads are reported below, with their address.
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push("console: " + m.text());
});
page.on("response", (r) => {
  if (r.status() >= 400 && !r.url().endsWith("/favicon.ico")) problems.push(r.status() + " from " + r.url());
});
try {
  await page.goto(url, { waitUntil: "load" });
  for (const step of steps) {
    const at = step.indexOf(":");
    const [verb, arg] = [step.slice(0, at), step.slice(at + 1)];
    if (verb === "wait") await page.waitForSelector(arg, { timeout: 15000 });
    else if (verb === "gone") await page.waitForSelector(arg, { state: "detached", timeout: 15000 });
    else if (verb === "click") await page.click(arg, { timeout: 15000 });
    else if (verb === "fill") {
      const eq = arg.lastIndexOf("=");
      await page.fill(arg.slice(0, eq), arg.slice(eq + 1), { timeout: 15000 });
    }
    else if (verb === "none") {
      const found = await page.locator(arg).count();
      if (found) throw new Error(found + " element(s) match " + arg);
    }
    else if (verb === "box") boxes[arg] = await page.locator(arg).first().boundingBox({ timeout: 15000 }).catch(() => null);
    else if (verb === "shot") await page.screenshot({ path: arg, fullPage: true });
    else throw new Error("unknown step " + step);
  }
  const text = await page.evaluate(() => document.body.innerText);
  const html = await page.content();
  // Each frame the page holds: where it is and what it shows (a frame the
  // browser refused to render shows its error page, not the content).
  const frames = await Promise.all(
    page.frames().filter((f) => f !== page.mainFrame()).map(async (f) => ({
      url: f.url(),
      text: await f.evaluate(() => (document.body ? document.body.innerText : "")).catch((e) => "unreadable: " + e),
    })),
  );
  console.log(JSON.stringify({ text, html, problems, frames, boxes }));
} catch (e) {
  const text = await page.evaluate(() => document.body.innerText).catch(() => "");
  console.error(String(e) + "\n--- page text ---\n" + text + "\n--- problems ---\n" + problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}

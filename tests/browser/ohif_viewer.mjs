// Opens a study in the OHIF viewer in headless Chromium for tests/test_ohif_viewer.py.
//
//   node ohif_viewer.mjs <viewer URL> <screenshot folder> <JSON list of the SEG's segment labels>
//
// Waits until the CT is drawn, opens the SEG (accepting OHIF's "open this
// segmentation?" prompt), reads the segmentation panel, then opens the SR and
// steps through its measurements with the SR viewport's arrows, reading the
// label drawn on the image for each.  Prints what it saw, and every console message
// and failed request, as one JSON line; exits non-zero with the reason when the
// viewer never shows the study.
import puppeteer from "puppeteer-core";

const [url, shots, segmentLabels] = process.argv.slice(2);
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_MS = 60_000;
const MAX_SR_STEPS = 60; // measurements stepped through in the SR viewport

const consoleMessages = [];
const failedRequests = [];
const seen = { steps: [] };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(page, what, fn, arg, timeout = STEP_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await page.evaluate(fn, arg);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

// The study browser's thumbnails and their visible text (runs in the page).
function thumbnails() {
  return [...document.querySelectorAll("[data-cy^='study-browser-thumbnail']")].map((t) => t.innerText.trim());
}

// The text of the annotations drawn on the viewports, one string per annotation, lines joined
// by " | " (runs in the page; Cornerstone draws them as SVG text).
function annotationLabels() {
  return [...document.querySelectorAll("svg text")]
    .map((t) => [...t.querySelectorAll("tspan")].map((s) => s.textContent.trim()).filter(Boolean).join(" | ")
      || t.textContent.trim())
    .filter((label) => /calcium score/i.test(label));
}

// Clicks the first visible button whose text is one of `labels` (runs in the page).
function clickButton(labels) {
  const button = [...document.querySelectorAll("button")].find(
    (b) => labels.includes(b.innerText.trim()) && b.offsetParent !== null,
  );
  if (!button) return null;
  button.click();
  return button.innerText.trim();
}

// Double-clicks, with the mouse, the thumbnail whose text names `modality`.
async function openThumbnail(page, modality) {
  for (const thumb of await page.$$("[data-cy^='study-browser-thumbnail']")) {
    const text = await thumb.evaluate((t) => t.innerText);
    if (new RegExp(`\\b${modality}\\b`).test(text)) {
      await thumb.click({ count: 2 });
      return true;
    }
  }
  return false;
}

// The non-blank pixels of the first viewport's canvas, sampled (runs in the page).
function canvasDrawn() {
  const canvas = document.querySelector(".cornerstone-canvas, canvas.cornerstone-canvas, [data-viewport-uid] canvas");
  if (!canvas || canvas.width === 0) return 0;
  const probe = document.createElement("canvas");
  probe.width = 64;
  probe.height = 64;
  const ctx = probe.getContext("2d");
  ctx.drawImage(canvas, 0, 0, 64, 64);
  const data = ctx.getImageData(0, 0, 64, 64).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 30) lit++;
  return lit;
}

// The segmentation panel: each segment's name and the colour of its swatch (runs in the page).
function segmentRows(names) {
  const rows = [];
  for (const title of document.querySelectorAll("[data-cy='data-row-title']")) {
    const text = title.textContent.trim();
    if (!names.includes(text)) continue;
    // the swatch is in the same row: the nearest ancestor holding an element coloured inline
    let colour = null;
    for (let row = title.parentElement, depth = 0; row && depth < 5 && !colour; depth++, row = row.parentElement) {
      const swatch = [...row.querySelectorAll("*")].find((e) => e.style && e.style.backgroundColor);
      if (swatch) colour = getComputedStyle(swatch).backgroundColor;
    }
    rows.push({ name: text, colour });
  }
  return rows;
}

function panelText() {
  return document.body.innerText;
}

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  // WebGL through SwiftShader: Cornerstone3D renders with WebGL, and there is no GPU here
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--ignore-gpu-blocklist"],
});
let exitCode = 0;
try {
  const page = await browser.newPage();
  page.on("console", (m) => consoleMessages.push({ type: m.type(), text: m.text(), url: m.location()?.url || "" }));
  page.on("pageerror", (e) => consoleMessages.push({ type: "pageerror", text: String(e), url: "" }));
  page.on("requestfailed", (r) => failedRequests.push({ url: r.url(), error: r.failure()?.errorText || "" }));
  page.on("response", (r) => {
    if (r.status() >= 400) failedRequests.push({ url: r.url(), error: `HTTP ${r.status()}` });
  });
  await page.setViewport({ width: 1600, height: 1000 });
  await page.goto(url, { waitUntil: "load" });

  seen.thumbnails = await until(page, "the study browser's thumbnails", () => {
    const t = [...document.querySelectorAll("[data-cy^='study-browser-thumbnail']")].map((x) => x.innerText.trim());
    // every series of the study: the CT, the summary (OT), the SEG and the SR
    return ["CT", "OT", "SEG", "SR"].every((m) => t.some((x) => x.startsWith(m))) ? t : null;
  });
  seen.ctLit = await until(page, "the CT drawn in the viewport", canvasDrawn);
  seen.steps.push("ct");
  // OHIF's first-visit tour covers the study browser: skip it
  await until(page, "the tour to be skipped or absent", async () => {
    const skip = [...document.querySelectorAll("button")].find((b) => b.innerText.trim() === "Skip all");
    if (skip) skip.click();
    await new Promise((r) => setTimeout(r, 300));
    return ![...document.querySelectorAll("button")].some((b) => b.innerText.trim() === "Skip all");
  }, undefined, 10_000);
  await page.screenshot({ path: `${shots}/1-ct.png` });

  // -- the SEG
  if (!(await openThumbnail(page, "SEG"))) throw new Error(`no SEG thumbnail in ${seen.thumbnails}`);
  const names = JSON.parse(segmentLabels);
  const deadline = Date.now() + STEP_MS;
  seen.prompts = [];
  for (;;) {
    const clicked = await page.evaluate(clickButton, ["Yes", "Load", "Open"]);
    if (clicked) seen.prompts.push(clicked);
    const rows = await page.evaluate(segmentRows, names);
    if (!rows.length && Date.now() > deadline - STEP_MS / 2 && !seen.panelOpened) {
      // the segmentation panel is collapsed: reveal the right side panel
      seen.panelOpened = await page.evaluate(() => {
        const reveal = document.querySelector("[data-cy='side-panel-header-right']");
        if (reveal) reveal.click();
        return Boolean(reveal);
      }) || "no toggle";
    }
    if (rows.length && rows.every((r) => r.colour)) {
      seen.segments = rows;
      break;
    }
    if (Date.now() > deadline) {
      seen.segments = rows;
      seen.segPageText = await page.evaluate(panelText);
      break;
    }
    await sleep(500);
  }
  seen.steps.push("seg");
  await sleep(1000); // let the segmentation overlay draw before the screenshot
  await page.screenshot({ path: `${shots}/2-seg.png` });

  // -- the SR
  const srStart = consoleMessages.length;
  if (!(await openThumbnail(page, "SR"))) throw new Error(`no SR thumbnail in ${seen.thumbnails}`);
  const srDeadline = Date.now() + 20_000;
  while (Date.now() < srDeadline) {
    const clicked = await page.evaluate(clickButton, ["Yes", "Load", "Open"]);
    if (clicked) seen.prompts.push(`SR: ${clicked}`);
    const drawn = await page.evaluate(annotationLabels);
    if (drawn.length && clicked === null) break;
    await sleep(500);
  }
  // The SR viewport draws one measurement at a time, with its label; its arrows step through them.
  seen.srLabels = [];
  let unchanged = 0;
  for (let step = 0; step < MAX_SR_STEPS && unchanged < 3; step++) {
    await sleep(700);
    const fresh = (await page.evaluate(annotationLabels)).filter((label) => !seen.srLabels.includes(label));
    seen.srLabels.push(...fresh);
    unchanged = fresh.length ? 0 : unchanged + 1;
    if (step === 0) await page.screenshot({ path: `${shots}/3-sr.png` });
    const stepped = await page.evaluate(() => {
      const arrow = document.querySelector("[data-cy='viewport-action-arrows-right'] svg");
      if (!arrow) return false;
      arrow.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      return true;
    });
    if (!stepped) break;
  }
  seen.srPageText = await page.evaluate(panelText);
  seen.srConsole = consoleMessages.slice(srStart);
  seen.steps.push("sr");
  await page.screenshot({ path: `${shots}/4-sr-last.png` });
} catch (error) {
  seen.error = String(error);
  exitCode = 1;
  try {
    const pages = await browser.pages();
    const page = pages[pages.length - 1];
    seen.pageText = await page.evaluate(() => document.body.innerText);
    await page.screenshot({ path: `${shots}/failure.png` });
  } catch {}
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ...seen, console: consoleMessages, failedRequests }));
process.exit(exitCode);

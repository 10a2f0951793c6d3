// Drives the node's status page in headless Chromium for tests/test_status_page.py.
//
//   node status_page.mjs <page URL> <series UID> <delivery state> <screenshot.png> [admin token]
//
// Reloads the page until the series' delivery shows <delivery state>; with a
// token, first types it into the series' retry form and clicks Retry.  Prints
// what the page shows for the series as one JSON line; exits non-zero with the
// reason when the page never gets there.
import puppeteer from "puppeteer-core";

const [url, seriesUid, wanted, screenshot, token] = process.argv.slice(2);
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const deadline = Date.now() + 90_000;

// The cells of a table's row for a series, as the page shows them (runs in the page).
function rowText(table, uid) {
  const row = [...document.querySelectorAll(`${table} tr[data-series]`)].find((r) => r.dataset.series === uid);
  return row ? [...row.cells].map((c) => c.innerText.trim()) : null;
}

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1600, height: 900 });
  await page.goto(url, { waitUntil: "load" });
  let notice = null;
  if (token) {
    const form = await page.$(`#deliveries tr[data-series="${seriesUid}"] form.retry`);
    if (!form) throw new Error(`no retry button for series ${seriesUid}`);
    await (await form.$("input[name=token]")).type(token);
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), (await form.$("button")).click()]);
    notice = await page.$eval("#notice", (n) => n.innerText.trim());
  }
  let delivery = null;
  while (true) {
    delivery = await page.evaluate(rowText, "#deliveries", seriesUid);
    if (delivery && delivery[2] === wanted) break;
    if (Date.now() > deadline) throw new Error(`delivery of ${seriesUid} never ${wanted}; last seen ${delivery}`);
    await new Promise((r) => setTimeout(r, 500));
    await page.goto(url, { waitUntil: "load" });
  }
  const series = await page.evaluate(rowText, "#series", seriesUid);
  const summaryLink = await page.$(`#series tr[data-series="${seriesUid}"] a[href$=".png"]`);
  let summary = null;
  if (summaryLink) {
    const href = await summaryLink.evaluate((a) => a.href);
    // the image must render in the browser, not only exist
    summary = await page.evaluate(async (src) => {
      const img = new Image();
      img.src = src;
      await img.decode();
      return [img.naturalWidth, img.naturalHeight];
    }, href);
  }
  const model = await page.$eval("#model", (m) => m.innerText.trim());
  const queue = await page.$eval("#queue-depth", (q) => q.innerText.trim());
  const retryButtons = (await page.$$("form.retry")).length;
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ series, delivery, summary, model, queue, notice, retryButtons }));
} finally {
  await browser.close();
}

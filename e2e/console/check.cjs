// Drives the lanemesh console in a real headless chromium (playwright-core, Debian's chromium):
// the page loads, lists LANE, draws a GrayQPS chart with data, and (with --switch) the lane's
// Disable button switches it off and Enable back on, as the pilot reports it. Screenshots go to
// OUT_DIR. Prints one JSON line of what it saw; exits 1 with the reason on failure.
//
//   node check.cjs URL OUT_DIR LANE [--switch]      (LANE: namespace/name)
"use strict";

const path = require("path");
const { chromium } = require("playwright-core");

const [url, outDir, lane, mode] = process.argv.slice(2);
if (!url || !outDir || !lane) {
  console.error("usage: node check.cjs URL OUT_DIR NAMESPACE/LANE [--switch]");
  process.exit(2);
}
const WAIT = { timeout: 30000 };

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const seen = {};
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1500, height: 1400 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForSelector('body[data-loaded="true"]', WAIT);
    const row = `#lanes tr[data-lane="${lane}"]`;
    await page.waitForSelector(row, WAIT);
    seen.laneRow = (await page.textContent(row)).trim();
    await page.waitForFunction(() => {
      const gray = document.getElementById("chart-gray");
      return gray && Number(gray.dataset.max) > 0 && gray.querySelector("canvas");
    }, null, WAIT);
    seen.gray = await page.evaluate(() => {
      const d = document.getElementById("chart-gray").dataset;
      return { series: d.series, points: Number(d.points), max: Number(d.max) };
    });
    await page.screenshot({ path: path.join(outDir, "console.png"), fullPage: true });
    if (mode === "--switch") {
      await page.click(`${row} button[data-action="disable"]`);
      await page.waitForSelector(`${row}[data-enabled="false"]`, WAIT);
      seen.disabled = true;
      await page.screenshot({ path: path.join(outDir, "console-lane-disabled.png"), fullPage: true });
      await page.click(`${row} button[data-action="enable"]`);
      await page.waitForSelector(`${row}[data-enabled="true"]`, WAIT);
      seen.enabledAgain = true;
    }
    if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
    console.log(JSON.stringify(seen));
  } catch (e) {
    console.error(`console check failed: ${e.message}\nseen so far: ${JSON.stringify(seen)}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();

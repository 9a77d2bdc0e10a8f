// Firefox bridge of conformance/clients: starts Firefox (ESR) headless
// through puppeteer-core over WebDriver BiDi and passes each line-protocol
// command from stdin to browser_driver.js in the page, answering on stdout.
//
//   FIREFOX=/usr/bin/firefox-esr node firefox.js
//
// {"cmd":"open","url":U} loads U (a page of the server's origin, so that
// the WebSocket's Origin is the server's own) and injects the drivers.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');
const puppeteer = require('puppeteer-core');

const msgpackSrc = fs.readFileSync(require.resolve('@msgpack/msgpack/dist.umd/msgpack.min.js'), 'utf8');
const driverSrc = fs.readFileSync(path.join(__dirname, 'browser_driver.js'), 'utf8');

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-firefox-'));
  const browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
    headless: true,
    userDataDir: profile,
    extraPrefsFirefox: {
      // No updates, telemetry or first-run pages: nothing but the test's traffic.
      'app.update.enabled': false,
      'browser.shell.checkDefaultBrowser': false,
      'datareporting.policy.dataSubmissionEnabled': false,
      'toolkit.telemetry.enabled': false,
    },
  });
  const page = await browser.newPage();
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  try {
    for await (const line of rl) {
      if (!line.trim()) continue;
      let r;
      try {
        const cmd = JSON.parse(line);
        if (cmd.cmd === 'open') {
          await page.goto(cmd.url);
          await page.evaluate(msgpackSrc);
          await page.evaluate(driverSrc);
          r = {};
        } else if (cmd.cmd === 'version') {
          r = {
            client: 'Firefox',
            version: await browser.version(),
            runtime: 'puppeteer-core ' + require('puppeteer-core/package.json').version + ' (WebDriver BiDi), node ' + process.version,
          };
        } else {
          r = JSON.parse(await page.evaluate((c) => window.__fanoutDriver.handle(c), cmd));
        }
      } catch (e) {
        r = { error: String(e && e.stack || e) };
      }
      process.stdout.write(JSON.stringify(r) + '\n');
    }
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});

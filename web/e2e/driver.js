#!/usr/bin/env node
/*
 * driver.js: drives pages of a real browser for the Go end-to-end tests
 * (engine/browser_e2e_test.go), which hold the scenario. Firefox is driven
 * over WebDriver BiDi with puppeteer-core; nothing is downloaded.
 *
 *   node web/e2e/driver.js <base url> [firefox executable]
 *
 * It launches the browser headless with a fresh profile (under $TMPDIR),
 * prints {"ready":true,"version":...} and then answers one JSON line on
 * stdout per JSON line read on stdin:
 *
 *   {"id":1,"op":"open","url":"http://..."}   -> {"id":1,"ok":true,"page":0}
 *   {"id":2,"op":"eval","page":0,"expr":"..."} -> {"id":2,"ok":true,"value":"<JSON text>"}
 *   {"id":3,"op":"close"}                      -> {"id":3,"ok":true}, then exit 0
 *
 * eval awaits the expression and answers its value as JSON text (the Go side
 * decodes it); a failure answers {"id","error":"..."}. Every page's console
 * errors and uncaught exceptions go to stderr. The browser is closed when
 * stdin ends, on SIGTERM/SIGINT, and on close; the exit status is 0 only
 * after a clean close.
 */
'use strict';

const readline = require('readline');
const puppeteer = require('puppeteer-core');

const base = process.argv[2];
const executablePath = process.argv[3] || process.env.FIREFOX || '/usr/bin/firefox-esr';
if (!base || !/^https?:\/\//.test(base)) {
  console.error('usage: node driver.js <base url> [firefox executable]');
  process.exit(2);
}

let browser = null;
const pages = [];

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function shutdown(code) {
  const b = browser;
  browser = null;
  if (b) {
    try {
      await b.close();
    } catch (err) {
      console.error('driver: closing the browser:', err && err.message);
      code = code || 1;
    }
  }
  process.exit(code);
}

async function handle(cmd) {
  switch (cmd.op) {
    case 'open': {
      if (typeof cmd.url !== 'string' || !cmd.url.startsWith(base)) throw new Error('open: url outside ' + base);
      const page = await browser.newPage();
      const n = pages.length;
      pages.push(page);
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warn') console.error(`page ${n} console.${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (err) => console.error(`page ${n} uncaught: ${err && err.message}`));
      await page.goto(cmd.url, { waitUntil: 'load', timeout: 30000 });
      return { page: n };
    }
    case 'eval': {
      const page = pages[cmd.page];
      if (!page) throw new Error('eval: no page ' + cmd.page);
      const src = `(async () => JSON.stringify(await (${cmd.expr})))()`;
      const value = await page.evaluate(src);
      return { value: value === undefined ? 'null' : value };
    }
    default:
      throw new Error('unknown op ' + JSON.stringify(cmd.op));
  }
}

async function main() {
  browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath,
    headless: true,
    // Quiet, offline, fresh: nothing but the page under test talks to the network.
    extraPrefsFirefox: {
      'app.update.enabled': false,
      'browser.safebrowsing.malware.enabled': false,
      'browser.safebrowsing.phishing.enabled': false,
      'network.captive-portal-service.enabled': false,
      'network.connectivity-service.enabled': false,
      'datareporting.policy.dataSubmissionEnabled': false,
      'toolkit.telemetry.enabled': false,
    },
  });
  const proc = browser.process();
  reply({ ready: true, version: await browser.version(), pid: (proc && proc.pid) || 0 });

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  // Commands run one after another, in order.
  let chain = Promise.resolve();
  rl.on('line', (line) => {
    if (!line.trim()) return;
    chain = chain.then(async () => {
      let cmd;
      try {
        cmd = JSON.parse(line);
      } catch (err) {
        reply({ error: 'bad command: ' + err.message });
        return;
      }
      if (cmd.op === 'close') {
        reply({ id: cmd.id, ok: true });
        await shutdown(0);
        return;
      }
      try {
        reply(Object.assign({ id: cmd.id, ok: true }, await handle(cmd)));
      } catch (err) {
        reply({ id: cmd.id, error: String((err && err.message) || err) });
      }
    });
  });
  rl.on('close', () => {
    chain.then(() => shutdown(browser ? 1 : 0));
  });
}

process.on('SIGTERM', () => shutdown(143));
process.on('SIGINT', () => shutdown(130));
main().catch((err) => {
  console.error('driver:', (err && err.stack) || err);
  shutdown(1);
});

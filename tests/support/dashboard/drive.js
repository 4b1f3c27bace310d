// Drives the calpost dashboard in Debian's Chromium through playwright-core (no browser
// download) for tests/test_dashboard.py, and prints what a person would see as one JSON object.
//
//   node drive.js CONFIG.json
//
// CONFIG: {"module": ".../node_modules/playwright-core", "base": "http://127.0.0.1:PORT",
//          "token": "...", "wrong": "...", "out": "DIR", "profile": "DIR"}
'use strict';

const fs = require('fs');
const path = require('path');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { chromium } = require(cfg.module);

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// What the page shows: KPI cards, timeline posts per channel, the chart's bars.
async function seen(page) {
  return page.evaluate(() => {
    const text = (e) => (e ? e.textContent.trim() : null);
    const kpis = {};
    for (const card of document.querySelectorAll('[data-testid=kpi]')) {
      const v = {};
      for (const dd of card.querySelectorAll('dd[data-kpi]')) v[dd.dataset.kpi] = text(dd);
      kpis[card.dataset.channel] = v;
    }
    const channels = {};
    for (const ch of document.querySelectorAll('[data-testid=channel]')) {
      channels[ch.dataset.channel] = {
        counts: text(ch.querySelector('[data-testid=counts]')),
        posts: [...ch.querySelectorAll('[data-testid=post]')].map((p) => ({
          id: p.dataset.id, state: p.dataset.state, text: text(p),
          visible: p.getBoundingClientRect().width > 0,
        })),
      };
    }
    const bars = {};
    for (const g of document.querySelectorAll('[data-testid=chart] g[data-id]'))
      bars[g.dataset.id] = g.querySelectorAll('rect').length;
    return {
      status: text(document.getElementById('status')),
      problem: document.getElementById('problem').hidden ? null : text(document.getElementById('problem')),
      kpis, channels, bars,
      engagement: text(document.querySelector('[data-testid=engagement]')),
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
    };
  });
}

async function main() {
  const out = { console: [], requests: [] };
  let phase = 'login'; // the sign-in page is a 401 on purpose: its console is not checked
  const context = await chromium.launchPersistentContext(cfg.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 900 },
    timeout: 60000,
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(30000);
    page.on('console', (m) => phase !== 'login' && out.console.push(m.type() + ': ' + m.text()));
    page.on('pageerror', (e) => out.console.push('pageerror: ' + e.message));
    page.on('request', (r) => out.requests.push(r.url()));

    // 1. Without a session: the sign-in form (401), a wrong token is refused.
    let resp = await page.goto(cfg.base + '/');
    out.login_status = resp.status();
    out.login_form = await page.locator('form[data-testid=login] input[name=token]').count();
    await page.fill('#token', cfg.wrong);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    out.wrong_alert = await page.locator('[role=alert]').textContent().catch(() => null);

    // 2. The right token: the dashboard, drawn from /v1/status, /v1/posts and /v1/report.
    await page.fill('#token', cfg.token);
    phase = 'dashboard';
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    out.url_after_login = page.url();
    await page.waitForSelector('body[data-ready]');
    out.ready = await page.getAttribute('body', 'data-ready');
    out.desktop = await seen(page);
    out.cookies = (await context.cookies()).map((c) => ({
      name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite,
    }));
    out.screenshot = path.join(cfg.out, 'dashboard.png');
    await page.screenshot({ path: out.screenshot, fullPage: true });

    // 3. A phone: signed in by /?token= this time; nothing wider than the screen.
    await context.clearCookies();
    await page.setViewportSize({ width: 390, height: 844 });
    resp = await page.goto(cfg.base + '/?token=' + encodeURIComponent(cfg.token));
    out.phone_url = page.url();
    await page.waitForSelector('body[data-ready]');
    out.phone = await seen(page);
    out.phone_screenshot = path.join(cfg.out, 'dashboard-phone.png');
    await page.screenshot({ path: out.phone_screenshot, fullPage: true });
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write('drive.js: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});

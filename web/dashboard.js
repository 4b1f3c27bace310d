// calpost dashboard: reads /v1/status, /v1/posts and /v1/report of the daemon that serves this
// page and draws the KPIs, the timeline and the engagement chart. No framework, nothing loaded
// from elsewhere; every text from the daemon goes through textContent, never through HTML.
'use strict';

(function () {
  const DAY = 86400000;
  const SVG = 'http://www.w3.org/2000/svg';
  const STATE_LABEL = {
    pending: 'scheduled', sending: 'sending', sent: 'published', failed: 'failed',
    missed: 'missed', cancelled: 'cancelled', skipped: 'skipped', unknown: 'unknown',
  };
  const COUNT_ORDER = ['pending', 'sent', 'failed', 'missed', 'unknown', 'cancelled', 'skipped'];

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  // ISO 8601 without milliseconds, as the API takes it.
  function iso(d) {
    return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  function dayKey(d) {
    return d.getFullYear() + '-' + (d.getMonth() + 1) + '-' + d.getDate();
  }

  const fmtDay = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
  const fmtShortDay = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric' });
  const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

  async function getJSON(url) {
    const r = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (r.status === 401) {
      location.assign('/'); // the session ended (the token changed): sign in again
      throw new Error('signed out');
    }
    let body = null;
    try { body = await r.json(); } catch (e) { /* reported below */ }
    if (!r.ok || !body) throw new Error(url + ': ' + ((body && body.error) || ('HTTP ' + r.status)));
    return body;
  }

  function percent(share) {
    return share === null || share === undefined ? '–' : Math.round(share * 1000) / 10 + ' %';
  }

  function seconds(ms) {
    if (ms === null || ms === undefined) return '–';
    return ms < 1000 ? ms + ' ms' : (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + ' s';
  }

  // --- status line ----------------------------------------------------------------------------
  function renderStatus(status) {
    const p = document.getElementById('status');
    p.replaceChildren();
    if (!status) {
      p.textContent = 'status unavailable';
      return;
    }
    const chans = status.channels || [];
    p.append(el('span', { text: (status.state || 'running') + ' · ' + chans.length + ' channel' +
      (chans.length === 1 ? '' : 's') }));
    const paused = chans.filter((c) => c.paused).map((c) => c.name);
    if (paused.length)
      p.append(' · ', el('span', { class: 'warn', text: 'paused: ' + paused.join(', ') }));
    for (const h of status.held_changes || [])
      p.append(' · ', el('span', { class: 'warn', text: 'plan change held: ' + h.reason }));
  }

  // --- KPIs -----------------------------------------------------------------------------------
  function renderKpis(report) {
    const box = document.getElementById('kpis');
    box.replaceChildren();
    const chans = (report && report.channels) || [];
    if (!chans.length) {
      box.append(el('p', { class: 'empty-note', text: 'No channels yet.' }));
      return;
    }
    for (const c of chans) {
      const st = c.states || {};
      const lat = c.lateness_ms;
      const failures = (st.failed || 0);
      const rows = [
        ['published', 'Published', String(c.published), false],
        ['on_time', 'On time', percent(c.on_time_share), c.on_time_share !== null && c.on_time_share < 0.95],
        ['failed', 'Failed', String(failures), failures > 0],
        ['missed', 'Missed', String(st.missed || 0), (st.missed || 0) > 0],
        ['lateness', 'Lateness p50 / p95', lat ? seconds(lat.p50) + ' / ' + seconds(lat.p95) : '–', false],
      ];
      const dl = el('dl');
      for (const [key, label, value, bad] of rows)
        dl.append(el('dt', { text: label }), el('dd', { 'data-kpi': key, class: bad ? 'bad' : null, text: value }));
      box.append(el('article', { class: 'kpi', 'data-testid': 'kpi', 'data-channel': c.name },
        el('h3', { text: c.name }), dl));
    }
  }

  // --- timeline -------------------------------------------------------------------------------
  function renderTimeline(posts, status, start) {
    const box = document.getElementById('timeline');
    box.replaceChildren();
    const names = [];
    for (const c of (status && status.channels) || []) if (!names.includes(c.name)) names.push(c.name);
    for (const p of posts.posts) if (!names.includes(p.channel)) names.push(p.channel);
    if (!names.length) {
      box.append(el('p', { class: 'empty-note', text: 'No channels and no posts in these 15 days.' }));
      return;
    }
    const today = dayKey(new Date());
    const days = [];
    for (let i = 0; i < 15; i++)
      days.push(new Date(start.getFullYear(), start.getMonth(), start.getDate() + i));
    for (const name of names) {
      const mine = posts.posts.filter((p) => p.channel === name);
      const counts = {};
      for (const p of mine) counts[p.state] = (counts[p.state] || 0) + 1;
      const summary = COUNT_ORDER.filter((s) => counts[s]).map((s) => counts[s] + ' ' + STATE_LABEL[s]);
      const strip = el('div', { class: 'days' });
      for (const d of days) {
        const key = dayKey(d);
        const list = el('ol');
        const here = mine.filter((p) => dayKey(new Date(p.due)) === key);
        for (const p of here) list.append(el('li', {}, chip(p)));
        strip.append(el('section', {
          class: 'day' + (key === today ? ' today' : '') + (here.length ? '' : ' empty'),
          'aria-label': fmtDay.format(d),
        }, el('h4', { title: fmtDay.format(d) },
          el('span', { class: 'long', text: (key === today ? 'Today, ' : '') + fmtDay.format(d) }),
          el('span', { class: 'short', text: key === today ? 'Today' : fmtShortDay.format(d) })), list));
      }
      box.append(el('article', { class: 'channel', 'data-testid': 'channel', 'data-channel': name },
        el('header', {}, el('h3', { text: name }),
          el('span', { class: 'counts', 'data-testid': 'counts', text: summary.join(' · ') || 'no posts' })),
        strip));
    }
    if (posts.truncated)
      box.append(el('p', { class: 'empty-note', text: 'Only the first ' + posts.posts.length + ' posts are shown.' }));
  }

  function chip(p) {
    const due = new Date(p.due);
    const title = p.title || p.id;
    const label = STATE_LABEL[p.state] || p.state;
    let tip = title + '\n' + p.channel + ' · ' + label + ' · due ' + fmtFull.format(due);
    if (p.published) tip += '\npublished ' + fmtFull.format(new Date(p.published));
    if (p.last_error) tip += '\n' + p.last_error;
    const link = p.state === 'sent' && /^https?:\/\//.test(p.remote_url || '');
    return el(link ? 'a' : 'span', {
      class: 'post state-' + p.state, title: tip, 'data-testid': 'post', 'data-id': p.id,
      'data-state': p.state, href: link ? p.remote_url : null,
      target: link ? '_blank' : null, rel: link ? 'noopener noreferrer' : null,
    }, el('span', { class: 'time', text: fmtTime.format(due) }), el('span', { class: 'state', text: label + ': ' }), title);
  }

  // --- engagement -----------------------------------------------------------------------------
  function renderEngagement(posts) {
    const box = document.getElementById('engagement');
    box.replaceChildren();
    const now = Date.now();
    const sampled = posts.posts.filter((p) => p.engagement && p.published && new Date(p.published) <= now)
      .slice(-40);
    if (!sampled.length) {
      box.append(el('p', { class: 'empty-note', text: 'No engagement samples yet for the posts of the last 7 days.' }));
      return;
    }
    const parts = ['replies', 'reposts', 'likes'];
    const value = (p, k) => Math.max(0, p.engagement[k] || 0);
    const max = Math.max(1, ...sampled.map((p) => parts.reduce((s, k) => s + value(p, k), 0)));
    // Drawn at the box's own width (and again when it changes), so text keeps its size.
    const chart = el('div', { class: 'chart', 'data-testid': 'chart' });
    box.append(chart);
    const W = Math.max(240, Math.min(chart.clientWidth - 26, 960)), H = 220, L = 36, B = 40, T = 8;
    const bw = Math.min((W - L - 8) / sampled.length, 56);
    const s = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': 'Replies, reposts and likes per published post' });
    s.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - 4, y2: H - B }));
    for (const f of [0, 0.5, 1]) {
      const y = H - B - f * (H - B - T);
      const t = svg('text', { x: L - 4, y: y + 4, 'text-anchor': 'end' });
      t.textContent = String(Math.round(f * max));
      s.append(t, svg('line', { class: 'axis', x1: L, y1: y, x2: W - 4, y2: y }));
    }
    sampled.forEach((p, i) => {
      let y = H - B;
      const x = L + i * bw + bw * 0.15;
      const g = svg('g', { 'data-id': p.id });
      const tip = svg('title');
      tip.textContent = (p.title || p.id) + ' (' + p.channel + '): ' +
        parts.map((k) => k + ' ' + (p.engagement[k] === null ? '?' : p.engagement[k])).join(', ');
      g.append(tip);
      for (const k of parts) {
        const h = value(p, k) / max * (H - B - T);
        if (h <= 0) continue;
        y -= h;
        g.append(svg('rect', { class: k, x: x, y: y, width: Math.max(1, bw * 0.7), height: h }));
      }
      const label = svg('text', { x: x + bw * 0.35, y: H - B + 14, 'text-anchor': 'middle' });
      label.textContent = bw >= 48 ? (p.title || p.id).slice(0, 8) : String(i + 1);
      g.append(label);
      s.append(g);
    });
    const legend = el('ul', { class: 'chart-legend' });
    for (const k of parts) legend.append(el('li', {}, el('span', { class: 'swatch ' + k }), k));
    chart.append(s, legend);
    drawnWidth = box.clientWidth;
  }

  let lastPosts = null, drawnWidth = 0;
  window.addEventListener('resize', () => {
    const box = document.getElementById('engagement');
    if (lastPosts && box && box.clientWidth !== drawnWidth) renderEngagement(lastPosts);
  });

  // --- loading --------------------------------------------------------------------------------
  async function load() {
    const problem = document.getElementById('problem');
    const n = new Date();
    const start = new Date(n.getFullYear(), n.getMonth(), n.getDate() - 7);
    const end = new Date(n.getFullYear(), n.getMonth(), n.getDate() + 8);
    try {
      const [status, posts, report] = await Promise.all([
        getJSON('/v1/status').catch(() => null),
        getJSON('/v1/posts?limit=5000&from=' + encodeURIComponent(iso(start)) + '&to=' + encodeURIComponent(iso(end))),
        getJSON('/v1/report?since=30d'),
      ]);
      renderStatus(status);
      renderKpis(report);
      renderTimeline(posts, status, start);
      lastPosts = posts;
      renderEngagement(posts);
      problem.hidden = true;
      document.getElementById('updated').textContent = fmtFull.format(new Date());
      document.body.dataset.ready = '1';
    } catch (e) {
      problem.textContent = 'Could not load the data: ' + e.message;
      problem.hidden = false;
      document.body.dataset.ready = 'error';
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    load();
    setInterval(load, 60000);
  });
})();

// tailor browse: one page over the JSON API of `tailor browse RUN` (pipelines/browse/server.py), or over
// the files of a static copy (`tailor browse RUN --out DIR`: window.TAILOR_STATIC from data/static.js).
// Plain JS, no build step. Every value from the run is put in the page as text (textContent, attributes
// set one by one), never as HTML: a caption holding <script> shows as those characters.
'use strict';

const STATIC = window.TAILOR_STATIC || null;
const main = document.getElementById('main');
let META = null;
let renderId = 0;
// the subset the page was opened on (`tailor browse RUN --subset NAME` opens #grid?subset=NAME), or last chosen
// in the grid: the nav links carry it, and the Duplicates page shows that subset's near_dedup decisions first
let SUBSET = null;

// ------------------------------------------------------------------ DOM helpers (text only)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = String(v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) node.setAttribute(k, String(v));
    else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setState(state) { document.documentElement.dataset.state = state; }

function showError(message) {
  const box = document.getElementById('message');
  box.textContent = message;
  box.hidden = false;
  setState('error');
}

function clearError() {
  const box = document.getElementById('message');
  box.hidden = true;
  box.textContent = '';
}

function fmt(x, digits = 3) { return x === null || x === undefined ? '–' : Number(x).toFixed(digits); }

function hashFor(view, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '') qs.set(k, v);
  const s = qs.toString();
  return '#' + view + (s ? '?' + s : '');
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '');
  const i = raw.indexOf('?');
  const view = (i < 0 ? raw : raw.slice(0, i)) || 'grid';
  const params = Object.fromEntries(new URLSearchParams(i < 0 ? '' : raw.slice(i + 1)));
  return { view, params };
}

// ------------------------------------------------------------------ data: the server's API or the static copy

async function api(view, params) {
  if (STATIC) return staticApi(view, params || {});
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '') qs.set(k, v);
  const response = await fetch('api/' + view + (qs.toString() ? '?' + qs : ''));
  let body;
  try { body = await response.json(); } catch (e) { body = { error: response.status + ' ' + response.statusText }; }
  if (!response.ok) throw new Error(body.error || String(response.status));
  return body;
}

function imageUrl(key) {
  if (STATIC) return STATIC.thumbs[key] ? 'thumbs/' + STATIC.thumbs[key] : null;
  return 'api/image?key=' + encodeURIComponent(key);
}

// The static copy answers the same views from its bounded sample (the first samples by key).
function staticApi(view, p) {
  const S = STATIC;
  if (view === 'meta') return Promise.resolve(S.meta);
  if (view === 'grid' || view === 'count') {
    const rows = S.samples.filter(r => staticMatch(r, p));
    if (view === 'count') return Promise.resolve({ count: rows.length, filters: p, static: true });
    const limit = Number(p.limit || 100);
    let start = 0;
    if (p.after) { start = rows.findIndex(r => r.key > p.after); if (start < 0) start = rows.length; }
    if (p.after && start >= rows.length) return Promise.reject(new Error('page past the end: no sample after key ' + p.after));
    const page = rows.slice(start, start + limit);
    const audit = p.audit || (S.meta.audits[0] || {}).name;
    const items = page.map(r => staticCard(r, audit, p.subset));
    return Promise.resolve({ items, next: start + limit < rows.length ? page[page.length - 1].key : null });
  }
  if (view === 'sample') return staticSample(p.key);
  if (view === 'duplicates') {
    const kind = p.kind || 'exact';
    if (kind === 'near' && p.subset && S.near && S.near[p.subset]) return Promise.resolve(S.near[p.subset]);
    return Promise.resolve(S.duplicates[kind] || { kind, groups: [], next: null, note: 'not in this static copy' });
  }
  if (view === 'concepts') {
    const name = p.audit || (S.meta.audits[0] || {}).name;
    return name && S.concepts[name] ? Promise.resolve(S.concepts[name])
      : Promise.reject(new Error('concepts need an audit of the run; this copy has none'));
  }
  if (view === 'neighbours') return staticSample(p.key).then(s => ({ key: p.key, items: s.neighbours }));
  return Promise.reject(new Error(view + ' needs the server (`tailor browse RUN`); a static copy cannot embed a text'));
}

function staticCard(r, audit, subset) {
  const card = { key: r.key, caption: r.caption, status: r.status, clip_score: r.clip_score, lang: r.lang };
  const names = audit && STATIC.meta.audits.find(a => a.name === audit);
  if (names && r.tags[audit]) {
    card.caption_concepts = r.tags[audit][0].map(i => names.concepts[i]);
    card.image_concepts = (r.tags[audit][1] || []).map(i => names.concepts[i]);
  }
  if (subset && r.decisions[subset]) {
    const [kept, reason, step] = r.decisions[subset];
    card.decision = { subset, kept, reason, step };
  }
  return card;
}

function staticMatch(r, p) {
  if (p.status && r.status !== p.status) return false;
  if (p.lang && r.lang !== p.lang) return false;
  if (p.clip_min && !(r.clip_score !== null && r.clip_score >= Number(p.clip_min))) return false;
  if (p.clip_max && !(r.clip_score !== null && r.clip_score <= Number(p.clip_max))) return false;
  if (p.subset) {
    const d = r.decisions[p.subset];
    if (p.decision && !(d && d[0] === (p.decision === 'kept'))) return false;
    if (p.reason && !(d && d[1] === p.reason)) return false;
    if (p.step && !(d && d[2] === p.step)) return false;
  }
  if (p.concept) {
    const audit = p.audit || (STATIC.meta.audits[0] || {}).name;
    const a = STATIC.meta.audits.find(x => x.name === audit);
    const id = a ? a.concepts.indexOf(p.concept) : -1;
    const t = r.tags[audit];
    if (id < 0 || !t) return false;
    const mode = p.concept_mode || 'caption';
    // the image modes read image tags: only rows whose image was fetched and tagged (null: no image)
    if (mode !== 'caption' && (r.status !== 'ok' || t[1] === null || t[1] === undefined)) return false;
    const inText = t[0].includes(id), inImage = (t[1] || []).includes(id);
    if (mode === 'caption' && !inText) return false;
    if (mode === 'image' && !inImage) return false;
    if (mode === 'both' && !(inText && inImage)) return false;
    if (mode === 'misaligned' && !(inText && !inImage)) return false;
  }
  if (p.sample) {  // FNV-1a of seed|key: a seeded sample of the copy (not the server's md5 draw)
    let h = 0x811c9dc5;
    for (const ch of (p.seed || '0') + '|' + r.key) { h ^= ch.charCodeAt(0); h = Math.imul(h, 0x01000193) >>> 0; }
    if (h % 1000000 >= Number(p.sample) * 1000000) return false;
  }
  return true;
}

const pendingSamples = {};
window.tailorSample = function (sample) {
  const waiting = pendingSamples[sample.key];
  if (waiting) { delete pendingSamples[sample.key]; waiting.resolve(sample); }
};

function staticSample(key) {
  const file = STATIC.details[key];
  if (!file) return Promise.reject(new Error('sample ' + key + ' is not in this static copy (it holds the first '
    + STATIC.meta.static_limit + ' samples by key)'));
  return new Promise((resolve, reject) => {
    pendingSamples[key] = { resolve, reject };
    const script = el('script', { src: 'data/samples/' + file });
    script.onerror = () => reject(new Error('could not load data/samples/' + file));
    document.body.append(script);
  });
}

// ------------------------------------------------------------------ pieces

function chips(card) {
  const out = [];
  const text = card.caption_concepts || [], image = card.image_concepts || [];
  for (const c of text) out.push(el('span', { class: 'chip' + (image.includes(c) ? ' both' : ''), title: 'caption' + (image.includes(c) ? ' and image' : ''), text: c }));
  for (const c of image) if (!text.includes(c)) out.push(el('span', { class: 'chip image', title: 'image', text: c }));
  return out;
}

function thumb(key, cls) {
  const src = imageUrl(key);
  return src ? el('img', { src, alt: '', loading: 'lazy', class: cls })
    : el('div', { class: 'noimage', text: 'no stored image' });
}

function cardNode(card, extra) {
  const facts = [el('span', { class: card.status === 'ok' ? 'status-ok' : 'status-bad', text: card.status }),
    ' · CLIP ' + fmt(card.clip_score), card.lang ? ' · ' + card.lang : ''];
  if (card.similarity !== undefined) facts.push(' · sim ' + fmt(card.similarity));
  const d = card.decision;
  return el('div', { class: 'card', 'data-key': card.key, onclick: () => { location.hash = hashFor('sample', { key: card.key }); } },
    card.status === 'ok' || STATIC ? thumb(card.key) : el('div', { class: 'noimage', text: card.status }),
    el('div', { class: 'key', text: card.key }),
    el('div', { class: 'caption', text: card.caption === null || card.caption === undefined ? '(no caption)' : card.caption }),
    el('div', { class: 'facts' }, facts),
    d ? el('div', { class: 'decision' }, el('span', { class: 'chip ' + (d.kept ? 'kept' : 'dropped'),
      text: d.kept ? 'kept in ' + d.subset : d.reason + ' (' + d.step + ')' })) : null,
    el('div', { class: 'tags' }, chips(card)),
    extra || null);
}

function select(name, label, options, value) {
  const s = el('select', { name });
  for (const [v, text] of options) s.append(el('option', { value: v, text, selected: String(v) === String(value || '') }));
  return el('label', {}, label, s);
}

function input(name, label, value, attrs) {
  return el('label', {}, label, el('input', Object.assign({ name, value: value || '' }, attrs || {})));
}

// ------------------------------------------------------------------ views

async function viewGrid(p, id) {
  const subset = META.subsets.find(s => s.name === p.subset);
  const audit = META.audits.find(a => a.name === p.audit) || META.audits[0];
  const form = el('form', { class: 'filters', id: 'filters' },
    select('status', 'status', [['', 'any'], ...Object.entries(META.statuses).map(([s, n]) => [s, s + ' (' + n + ')'])], p.status),
    select('subset', 'subset', [['', '–'], ...META.subsets.map(s => [s.name, s.name])], p.subset),
    select('decision', 'decision', [['', 'any'], ['kept', 'kept'], ['dropped', 'dropped']], p.decision),
    select('step', 'dropped by step', [['', 'any'], ...(subset ? subset.steps.map(s => [s, s]) : [])], p.step),
    select('reason', 'reason', [['', 'any'], ...(subset ? Object.entries(subset.reasons).map(([r, x]) => [r, r + ' (' + x.rows + ')']) : [])], p.reason),
    META.audits.length ? select('concept', 'concept' + (audit ? ' (' + audit.name + ')' : ''), [['', 'any'], ...audit.concepts.slice().sort().map(c => [c, c])], p.concept) : null,
    META.audits.length ? select('concept_mode', 'concept in', META.text_pass ? [['caption', 'caption tags']] : [['caption', 'caption tags'], ['image', 'image tags'], ['both', 'both'], ['misaligned', 'caption, not image']], p.concept_mode) : null,
    input('clip_min', 'CLIP ≥', p.clip_min, { type: 'number', step: '0.01' }),
    input('clip_max', 'CLIP ≤', p.clip_max, { type: 'number', step: '0.01' }),
    select('lang', 'language', [['', 'any'], ...META.languages.map(l => [l.lang, l.lang + ' (' + l.rows + ')'])], p.lang),
    input('sample', 'random share', p.sample, { type: 'number', step: '0.01', min: '0', max: '1', placeholder: 'e.g. 0.1' }),
    input('seed', 'seed', p.seed, { type: 'number', step: '1', min: '0' }),
    input('limit', 'per page', p.limit || '100', { type: 'number', min: '1', max: String(META.page_max) }),
    el('button', { type: 'submit', text: 'Show' }));
  if (p.audit) form.append(el('input', { type: 'hidden', name: 'audit', value: p.audit }));
  form.addEventListener('submit', e => {
    e.preventDefault();
    const params = Object.fromEntries(new FormData(form).entries());
    if (!params.subset) { delete params.decision; delete params.step; delete params.reason; }
    if (!params.concept) delete params.concept_mode;
    if (!params.sample) delete params.seed;
    if (params.limit === '100') delete params.limit;
    location.hash = hashFor('grid', params);
  });
  form.elements.subset.addEventListener('change', () => {  // another subset has other steps and reasons
    form.elements.step.value = '';
    form.elements.reason.value = '';
    form.requestSubmit();
  });
  const summary = el('div', { class: 'summary', id: 'summary', text: 'loading…' });
  const grid = el('div', { class: 'cards', id: 'grid' });
  const more = el('button', { class: 'more', id: 'more', text: 'More', hidden: true });
  main.replaceChildren(form, summary, grid, more);
  let shown = 0;
  const filters = Object.assign({}, p);
  const load = async after => {
    setState('loading');
    const page = await api('grid', Object.assign({}, filters, { after }));
    if (id !== renderId) return;
    for (const card of page.items) grid.append(cardNode(card));
    shown += page.items.length;
    more.hidden = !page.next;
    more.onclick = () => load(page.next).catch(e => showError(e.message));
    summary.dataset.shown = shown;
    summary.firstChild.textContent = 'showing ' + shown + (page.partial ? ' (the search for more stopped early; More goes on)' : '');
    setState('ready');
  };
  summary.replaceChildren(el('span', { text: '' }), el('span', { id: 'count' }));
  await load(filters.after);
  api('count', Object.assign({}, filters, { after: undefined, limit: undefined })).then(c => {
    if (id !== renderId) return;
    const node = document.getElementById('count');
    node.dataset.count = c.count;
    node.textContent = ' of ' + c.count + ' matching samples' + (STATIC ? ' in this static copy' : '');
  }).catch(e => showError(e.message));
}

function kvTable(obj) {
  const t = el('table', { class: 'kv' });
  for (const [k, v] of Object.entries(obj)) {
    t.append(el('tr', {}, el('th', { text: k }), el('td', { text: v === null ? '–' : (typeof v === 'object' ? JSON.stringify(v) : String(v)) })));
  }
  return t;
}

async function viewSample(p, id) {
  if (!p.key) throw new Error('key: give the key of a sample');
  const s = await api('sample', { key: p.key });
  if (id !== renderId) return;
  const a = s.annotation;
  const decisions = el('table', { class: 'kv', id: 'decisions' }, el('tr', {}, ...['subset', 'kept', 'step', 'reason', 'detail'].map(h => el('th', { text: h }))));
  for (const [name, d] of Object.entries(s.decisions)) {
    decisions.append(el('tr', { 'data-subset': name }, el('td', { text: name }),
      ...(d ? [String(d.kept), d.step || '–', d.reason, d.detail || '–'] : ['not in subset', '', '', '']).map(x => el('td', { text: x }))));
  }
  const tags = el('div', { id: 'concepts' });
  for (const [audit, t] of Object.entries(s.concepts)) {
    tags.append(el('div', {}, el('strong', { text: audit + ': ' }),
      'caption ', ...t.caption.map(c => el('span', { class: 'chip', text: c })),
      ' image ', ...t.image.map(c => el('span', { class: 'chip image', text: c })),
      t.image_top ? ' (top: ' + t.image_top + ' ' + fmt(t.image_top_score) + ')' : ''));
  }
  const neighbours = el('div', { class: 'cards', id: 'neighbours' }, s.neighbours.map(n => cardNode(n)));
  main.replaceChildren(
    el('h2', { text: 'Sample ' + s.key }),
    el('div', { class: 'detail' },
      el('div', {}, s.has_image ? thumb(s.key, 'full') : el('div', { class: 'noimage', text: 'no stored image (' + a.status + ')' }),
        el('p', { class: 'caption', id: 'caption', text: a.caption === null ? '(no caption)' : a.caption })),
      el('div', {}, el('h3', { text: 'Decisions' }), decisions,
        el('h3', { text: 'Concept tags' }), tags,
        s.semdedup ? el('p', { text: 'SemDeDup: cluster ' + s.semdedup.cluster + (s.semdedup.dup_of ? ', duplicate of ' + s.semdedup.dup_of : ', kept') }) : null,
        el('h3', { text: 'Annotation' }), kvTable(a))),
    el('h3', { text: 'Nearest neighbours (image embedding)' }),
    s.neighbours.length ? neighbours : el('p', { class: 'note', text: 'no embedding neighbours' }));
  setState('ready');
}

async function viewDuplicates(p, id) {
  const columns = {};
  const wrap = el('div', { class: 'dups' });
  for (const [kind, title] of [['exact', 'Exact (sha256)'], ['near', 'Near (pHash)'], ['semantic', 'Semantic (SemDeDup)']]) {
    columns[kind] = el('div', { id: 'dup-' + kind }, el('h3', { text: title }));
    wrap.append(columns[kind]);
  }
  main.replaceChildren(wrap);
  const load = async (kind, after) => {
    const page = await api('duplicates', { kind, after, subset: kind === 'near' ? (p.subset || SUBSET) : undefined });
    if (id !== renderId) return;
    const col = columns[kind];
    col.querySelector('button.more')?.remove();
    if (!after) {
      const step = page.step && page.step.max_hamming !== null && page.step.max_hamming !== undefined
        ? ', near_dedup max_hamming ' + page.step.max_hamming : '';
      const parts = [];
      if (page.groups.length || !page.note) {
        parts.push((page.total_groups ?? page.groups.length) + ' groups' + (page.subset ? ' (subset ' + page.subset + step + ')' : ''));
      }
      if (page.note) parts.push(page.note);
      col.dataset.subset = page.subset || '';
      col.append(el('p', { class: 'summary', text: parts.join('; ') }));
    }
    for (const g of page.groups) {
      col.append(el('div', { class: 'group', 'data-kept': g.kept },
        el('div', { class: 'members' }, g.members.map(m => {
          const node = cardNode(m);
          if (m.kept) { node.classList.add('keeper'); node.append(el('span', { class: 'chip kept', text: 'kept' })); }
          return node;
        }))));
    }
    if (page.next) col.append(el('button', { class: 'more', text: 'More', onclick: () => load(kind, page.next).catch(e => showError(e.message)) }));
  };
  await Promise.all(['exact', 'near', 'semantic'].map(k => load(k)));
  setState('ready');
}

async function viewSearch(p, id) {
  const form = el('form', { class: 'filters', id: 'search' },
    input('q', 'text query (embedded by the run\'s CLIP text tower)', p.q, { size: 40, class: 'wide' }),
    el('button', { type: 'submit', text: 'Search' }));
  form.addEventListener('submit', e => {
    e.preventDefault();
    location.hash = hashFor('search', { q: form.elements.q.value });
  });
  const results = el('div', { class: 'cards', id: 'grid' });
  main.replaceChildren(form, results);
  if (META.static) form.append(el('p', { class: 'note', text: 'A static copy cannot embed a text: search needs `tailor browse RUN`.' }));
  if (p.q) {
    const r = await api('search', { q: p.q });
    if (id !== renderId) return;
    results.append(...r.items.map(c => cardNode(c)));
  }
  setState('ready');
}

async function viewConcepts(p, id) {
  const r = await api('concepts', { audit: p.audit });
  if (id !== renderId) return;
  const rows = r.concepts;
  const table = el('table', { class: 'kv', id: 'concept-table' }, el('tr', {},
    ...['concept', 'rank', r.frequency + ' frequency', 'caption rows', 'images', 'matched', 'tail', 'samples'].map(h => el('th', { text: h }))));
  for (const c of rows) {
    const link = mode => el('a', { href: hashFor('grid', { audit: r.audit, concept: c.concept, concept_mode: mode }), text: mode, class: 'concept-link', 'data-mode': mode });
    table.append(el('tr', { 'data-concept': c.concept },
      el('td', {}, el('a', { href: hashFor('grid', { audit: r.audit, concept: c.concept, concept_mode: r.mode }), text: c.concept, class: 'concept' })),
      ...[c.rank, c.frequency, c.text_count, c.image_count, c.matched_count, c.tail ? 'tail' : ''].map(x => el('td', { text: x })),
      el('td', {}, ...(META.text_pass ? [link('caption')] : [link('caption'), ' ', link('image'), ' ', link('both'), ' ', link('misaligned')]))));
  }
  main.replaceChildren(el('h2', { text: 'Concepts of audit ' + r.audit + ' (tail first)' }), rankFrequency(r), table);
  setState('ready');
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function decades(max) {  // 1, 10, 100, ... up to max: the ticks of a log axis
  const out = [];
  for (let v = 1; v <= max; v *= 10) out.push(v);
  return out;
}

// The rank-frequency chart, log-log: x the concept's rank (1 = most frequent), y what the audit's frequency counts
// (r.unit: caption rows or images). Tail concepts in red; the head and the rarest concept named at their points.
function rankFrequency(r) {
  const rows = r.concepts;
  const w = 640, h = 300, left = 64, right = 24, top = 30, bottom = 48;
  const pw = w - left - right, ph = h - top - bottom;
  const svg = svgEl('svg', { width: w, height: h, class: 'rankfreq', role: 'img',
    'aria-label': 'rank-frequency of the concepts of audit ' + r.audit });
  const pts = rows.filter(c => c.frequency > 0).sort((a, b) => a.rank - b.rank || (a.concept < b.concept ? -1 : 1));
  const maxR = Math.max(2, ...pts.map(c => c.rank)), maxF = Math.max(2, ...pts.map(c => c.frequency));
  // log axes from just below 1, so that the points at rank 1 or frequency 1 stand clear of the axes
  const lo = Math.log10(0.7);
  const x = rank => left + pw * (Math.log10(rank) - lo) / (Math.log10(maxR) - lo);
  const y = f => top + ph - ph * (Math.log10(f) - lo) / (Math.log10(maxF) - lo);
  // axes, ticks and their labels
  svg.append(svgEl('line', { class: 'axis x', x1: left, y1: top + ph, x2: left + pw, y2: top + ph }));
  svg.append(svgEl('line', { class: 'axis y', x1: left, y1: top, x2: left, y2: top + ph }));
  for (const v of decades(maxR)) {
    const g = svgEl('g', { class: 'tick x' });
    g.append(svgEl('line', { x1: x(v), y1: top + ph, x2: x(v), y2: top + ph + 5 }),
      svgEl('text', { x: x(v), y: top + ph + 17, 'text-anchor': 'middle' }, v));
    svg.append(g);
  }
  for (const v of decades(maxF)) {
    const g = svgEl('g', { class: 'tick y' });
    g.append(svgEl('line', { x1: left - 5, y1: y(v), x2: left, y2: y(v) }),
      svgEl('text', { x: left - 8, y: y(v) + 4, 'text-anchor': 'end' }, v));
    svg.append(g);
  }
  svg.append(svgEl('text', { class: 'axis-label x', x: left + pw / 2, y: h - 8, 'text-anchor': 'middle' },
    'concept rank (1 = most frequent), log scale'));
  svg.append(svgEl('text', { class: 'axis-label y', x: 8, y: 16 },
    (r.unit || r.frequency + ' frequency') + ', log scale'));
  for (const c of pts) {
    const dot = svgEl('circle', { cx: x(c.rank), cy: y(c.frequency), r: 3, class: c.tail ? 'tail' : 'head',
      'data-concept': c.concept });
    dot.append(svgEl('title', {}, c.concept + ': rank ' + c.rank + ', ' + c.frequency + (c.tail ? ' (tail)' : '')));
    svg.append(dot);
  }
  // name the most frequent concept and the rarest shown (concepts tied on a rank share its point)
  const named = (c) => {
    const tied = pts.filter(o => o.rank === c.rank);
    return tied.length > 1 ? tied[0].concept + ', ' + tied[1].concept + (tied.length > 2 ? ', …' : '')
      + ' (' + tied.length + ' at rank ' + c.rank + ')' : c.concept;
  };
  if (pts.length) {
    const first = pts[0], last = pts[pts.length - 1];
    svg.append(svgEl('text', { class: 'point-label', x: x(first.rank) + 6, y: y(first.frequency) + 4 }, named(first)));
    if (last.rank !== first.rank) {
      svg.append(svgEl('text', { class: 'point-label', x: x(last.rank) - 6, y: y(last.frequency) - 6,
        'text-anchor': 'end' }, named(last)));
    }
  }
  const zero = rows.length - pts.length;
  svg.append(svgEl('text', { class: 'legend', x: left + pw, y: 16, 'text-anchor': 'end' },
    'red: tail' + (zero ? '; ' + zero + ' concepts at 0 not shown' : '')));
  return svg;
}

// ------------------------------------------------------------------ router

const VIEWS = { grid: viewGrid, sample: viewSample, duplicates: viewDuplicates, search: viewSearch, concepts: viewConcepts };

async function render() {
  const id = ++renderId;
  clearError();
  setState('loading');
  const { view, params } = parseHash();
  if (view === 'grid') SUBSET = params.subset || null;  // the grid's subset filter: chosen or cleared
  else if (params.subset) SUBSET = params.subset;
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.view === view);
    const carries = SUBSET && (a.dataset.view === 'grid' || a.dataset.view === 'duplicates');
    a.setAttribute('href', hashFor(a.dataset.view, carries ? { subset: SUBSET } : {}));
  }
  try {
    if (!META) {
      META = await api('meta');
      document.getElementById('run').textContent = META.run + ' · ' + META.rows + ' rows' + (META.static ? ' · static copy' : '');
    }
    const fn = VIEWS[view];
    if (!fn) throw new Error('no view ' + view);
    await fn(params, id);
  } catch (e) {
    if (id === renderId) showError(e.message);
  }
}

window.addEventListener('hashchange', render);
render();

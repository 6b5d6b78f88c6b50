// DOM helpers. Server data only ever reaches the page through text nodes and attributes set
// here, never through innerHTML.

/**
 * Create an element: h('a', {class: 'x', href, dataset: {id}, onclick}, 'text', child, ...).
 * Strings and numbers become text nodes; null/undefined/false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style' && typeof value === 'object') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace all children of ``el`` with ``children``. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** Set text only when it changed (keeps selection and avoids layout churn on live updates). */
export function setText(el, text) {
  const value = text === null || text === undefined ? '' : String(text);
  if (el.textContent !== value) el.textContent = value;
}

const isLoopback = (host) => host === 'localhost' || /^127\./.test(host) || host === '[::1]';

/** A link only for http(s) URLs; anything else (javascript:, data:) is shown as plain text, and
 * so is a loopback URL when this page was not opened on loopback (it would name the viewer's
 * own machine, not the node's). */
export function safeLink(url, text = url) {
  if (typeof url !== 'string' || !url) return document.createTextNode('—');
  let parsed;
  try {
    parsed = new URL(url, window.location.href);
  } catch {
    return document.createTextNode(url);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return document.createTextNode(url);
  if (isLoopback(parsed.hostname) && !isLoopback(window.location.hostname)) {
    return h('span', {title: 'a loopback address: reachable only on that machine'}, text);
  }
  return h('a', {href: parsed.href, target: '_blank', rel: 'noopener noreferrer'}, text);
}

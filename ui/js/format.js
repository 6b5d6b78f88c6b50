// Human formatting of bytes, cores, durations and times.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
  return `${value.toFixed(digits).replace(/\.0+$|(\.\d*[1-9])0+$/, '$1')} ${UNITS[unit]}`;
}

export function number(n, digits = 2) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  return String(Number(Number(n).toFixed(digits)));
}

/** Value of one resource kind in its natural unit. */
export function amount(kind, n) {
  if (kind === 'memory' || kind === 'storage') return bytes(n);
  if (kind === 'cpu') return `${number(n)} cores`;
  return `${number(n, 0)}`;
}

/** Compact amount without the unit word for cpu/gpu (used in tight places). */
export function short(kind, n) {
  if (kind === 'memory' || kind === 'storage') return bytes(n);
  return number(n, kind === 'cpu' ? 2 : 0);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return '—';
  let s = Math.max(0, Math.floor(Number(seconds)));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const mm = Math.floor(s / 60); s -= mm * 60;
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${mm}m ${s}s`;
  if (mm) return `${mm}m ${s}s`;
  return `${s}s`;
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return 'never';
  if (seconds < 1.5) return 'just now';
  return `${duration(seconds)} ago`;
}

const pad = (n) => String(n).padStart(2, '0');

/** Unix seconds → "14:03:07" today, else "2025-11-29 14:03". */
export function clock(unix) {
  if (!unix) return '—';
  const d = new Date(unix * 1000);
  const now = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function isoTime(unix) {
  return unix ? new Date(unix * 1000).toISOString() : '';
}

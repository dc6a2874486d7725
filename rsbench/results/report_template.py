"""The inline CSS and JavaScript of `bench report` (one self-contained HTML file, no network)."""

from __future__ import annotations

CSS = """
:root { --hit: #1a9850; --miss: #d73027; --line: #d0d0d0; --muted: #666; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 24px 48px; color: #222; }
header { border-bottom: 2px solid #222; margin-bottom: 8px; }
h1 { margin: 18px 0 4px; font-size: 24px; }
h2 { margin: 34px 0 6px; font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { margin: 22px 0 6px; font-size: 16px; }
nav a { margin-right: 14px; }
.muted, .note { color: var(--muted); font-size: 12.5px; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " ▲"; font-size: 10px; }
table.sortable th[aria-sort="descending"]::after { content: " ▼"; font-size: 10px; }
td.best { font-weight: 700; }
td sup { color: #0b5394; font-size: 10px; }
td .std { color: var(--muted); font-size: 12px; }
tr.published td { color: #555; background: #fafafa; font-style: italic; }
tr.published.hidden { display: none; }
.sig-matrix td { text-align: center; min-width: 70px; }
.sig-matrix td.win { background: #d9f0d3; }
.sig-matrix td.loss { background: #f8d7d3; }
.sig-matrix td.diag { background: #eee; }
img.figure { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.scroll img.figure.wide { max-width: none; width: auto; }
.warn { color: #a94400; }
.scroll { overflow-x: auto; }
"""

JS = """
function cellValue(row, col) {
  const td = row.children[col];
  if (!td) return null;
  const v = td.getAttribute('data-value');
  if (v === null || v === '') return td.textContent.trim().toLowerCase();
  const x = parseFloat(v);
  return isNaN(x) ? null : x;
}
function sortTable(th) {
  const table = th.closest('table');
  const col = Array.prototype.indexOf.call(th.parentNode.children, th);
  const asc = th.getAttribute('aria-sort') !== 'ascending';
  table.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, col), y = cellValue(b, col);
    if (x === y) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    return (x < y ? -1 : 1) * (asc ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
}
function togglePublished(box) {
  const table = document.getElementById(box.getAttribute('data-table'));
  table.querySelectorAll('tr.published').forEach(r => r.classList.toggle('hidden', !box.checked));
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => sortTable(th)));
  document.querySelectorAll('input.toggle-published').forEach(b => {
    b.addEventListener('change', () => togglePublished(b));
    togglePublished(b);
  });
  document.body.setAttribute('data-ready', '1');  // the page's script ran to the end
});
"""

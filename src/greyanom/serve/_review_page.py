"""The review page: server-rendered HTML and a little plain JavaScript, no build step.

The queue is rendered on the server from the filter form (a GET form, so a filtered
queue is a link); the script selects a row, shows its image under the heatmap, and posts
the verdict (``d`` defect, ``n`` normal; ``j``/``k`` next/previous) with the session
cookie and the ``X-Requested-With`` header the service asks of cookie POSTs.
"""

from __future__ import annotations

from html import escape

__all__ = ["render_page", "render_login"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#263238;color:#fff}
header form{margin-left:auto}
main{display:flex;gap:1em;padding:1em}
#queue{flex:1 1 45%;overflow:auto;max-height:85vh}
#detail{flex:1 1 55%}
table{border-collapse:collapse;width:100%;font-size:.9em}
td,th{padding:.25em .5em;border-bottom:1px solid #ddd;text-align:left}
tr.row{cursor:pointer} tr.row:hover{background:#eef} tr.selected{background:#cde}
.REJECT{color:#b71c1c;font-weight:bold} .REVIEW{color:#e65100} .PASS{color:#1b5e20}
.stack{position:relative;width:384px;height:384px;background:#000}
.stack img{position:absolute;left:0;top:0;width:384px;height:384px;image-rendering:pixelated}
#heatmap{opacity:.45}
kbd{border:1px solid #999;border-radius:3px;padding:0 .3em;background:#fff}
#status{min-height:1.5em}
.filters{display:flex;flex-wrap:wrap;gap:.5em;align-items:end;margin-bottom:.5em}
.filters label{display:flex;flex-direction:column;font-size:.8em}
.problem{color:#b71c1c}
"""

_SCRIPT = """
(function(){
  const rows = Array.from(document.querySelectorAll('tr.row'));
  const status = document.getElementById('status');
  let current = -1;
  function show(i){
    if(i < 0 || i >= rows.length){ return; }
    rows.forEach(r => r.classList.remove('selected'));
    current = i; const row = rows[i]; row.classList.add('selected');
    const id = row.dataset.id;
    document.getElementById('image').src = '/api/v1/inspections/' + id + '/image.png';
    document.getElementById('heatmap').src = '/api/v1/heatmaps/' + id + '.png';
    document.getElementById('facts').textContent = 'inspection ' + id + ' · wafer ' + row.dataset.wafer +
      ' · point ' + row.dataset.point + ' · ' + row.dataset.decision + ' · score ' + row.dataset.score +
      ' · confidence ' + row.dataset.confidence + ' · model ' + row.dataset.model;
    document.getElementById('detail').dataset.id = id;
    status.textContent = '';
    fetch('/api/v1/inspections/' + id, {credentials: 'same-origin'}).then(r => r.json()).then(rec => {
      const list = (rec.reviews || []).map(v => v.created_at.slice(0, 19) + ' ' + v.inspector + ': ' + v.verdict +
        (v.note ? ' (' + v.note + ')' : ''));
      document.getElementById('history').textContent = list.length ? list.join('\\n') : 'no review yet';
    });
  }
  function verdict(v){
    const id = document.getElementById('detail').dataset.id;
    if(!id){ status.textContent = 'select an inspection first'; return; }
    const note = document.getElementById('note').value;
    status.textContent = 'saving ' + v + ' for inspection ' + id + '...';
    fetch('/api/v1/inspections/' + id + '/review', {
      method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'X-Requested-With': 'greyanom-review'},
      body: JSON.stringify({verdict: v, note: note})
    }).then(r => r.json().then(body => ({ok: r.ok, body: body}))).then(res => {
      if(!res.ok){ status.textContent = 'not saved: ' + res.body.message; return; }
      status.textContent = 'saved: inspection ' + id + ' ' + v + ' by ' + res.body.inspector;
      rows[current].querySelector('.n').textContent = String(Number(rows[current].querySelector('.n').textContent) + 1);
      document.getElementById('note').value = '';
      if(current + 1 < rows.length){ show(current + 1); status.textContent += ' (next)'; }
    }).catch(e => { status.textContent = 'not saved: ' + e; });
  }
  rows.forEach((r, i) => r.addEventListener('click', () => show(i)));
  document.getElementById('defect').addEventListener('click', () => verdict('defect'));
  document.getElementById('normal').addEventListener('click', () => verdict('normal'));
  document.getElementById('opacity').addEventListener('input', e => {
    document.getElementById('heatmap').style.opacity = e.target.value / 100; });
  document.addEventListener('keydown', e => {
    if(e.target.tagName === 'INPUT' || e.target.tagName === 'TEXTAREA' || e.target.tagName === 'SELECT'){ return; }
    if(e.key === 'd'){ verdict('defect'); } else if(e.key === 'n'){ verdict('normal'); }
    else if(e.key === 'j'){ show(current + 1); } else if(e.key === 'k'){ show(current - 1); }
  });
  if(rows.length){ show(0); }
})();
"""


def _page(title, body, script=""):
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width'><style>{_STYLE}</style></head>"
            f"<body>{body}{f'<script>{script}</script>' if script else ''}</body></html>")


def render_login(message=None):
    """The login form: a token in, an HttpOnly session cookie out."""
    note = f"<p class='problem' id='login-problem'>{escape(message)}</p>" if message else ""
    body = ("<header><strong>greyanom review</strong></header><main><form method='post' action='/review/login'>"
            f"<h2>Sign in</h2>{note}<p><label>Token <input type='password' name='token' id='token' "
            "autocomplete='current-password' required></label></p>"
            "<p><button type='submit' id='login'>Sign in</button></p>"
            "<p>A token of role <em>review</em> or <em>admin</em>; the session lasts 8 hours.</p></form></main>")
    return _page("greyanom review: sign in", body)


def _option(value, current, label=None):
    selected = " selected" if value == (current or "") else ""
    return f"<option value='{escape(value)}'{selected}>{escape(label or value or 'all')}</option>"


def render_page(principal, rows, filters, problem=None, *, login=True):
    """The review page for ``principal``: filters, the queue ``rows``, the detail pane."""
    f = filters
    decision = "".join(_option(v, f["decision"]) for v in ("", "REVIEW", "PASS", "REJECT"))
    checked = " checked" if f["include_reviewed"] else ""
    logout = ("<form method='post' action='/review/logout'><button type='submit'>Sign out</button></form>"
              if login else "<span>(no access control: loopback only)</span>")
    trs = "".join(
        f"<tr class='row' data-id='{r['id']}' data-wafer='{escape(r['wafer_id'])}' data-point='{r['inspection_point']}'"
        f" data-decision='{escape(r['decision'])}' data-score='{r['anomaly_score']:.4g}'"
        f" data-confidence='{r['confidence']:.3f}' data-model='{escape(r['model_version'])}'>"
        f"<td>{r['id']}</td><td>{escape(r['wafer_id'])}</td><td>{r['inspection_point']}</td>"
        f"<td class='{escape(r['decision'])}'>{escape(r['decision'])}</td><td>{r['anomaly_score']:.4g}</td>"
        f"<td>{escape(r['created_at'][:19])}</td><td class='n'>{r['n_reviews']}</td></tr>"
        for r in rows
    )
    empty = "" if rows else "<p id='empty'>Nothing to review with these filters.</p>"
    warn = f"<p class='problem'>{escape(problem)}</p>" if problem else ""
    body = (
        f"<header><strong>greyanom review</strong><span>{escape(principal.name)} ({escape(principal.role)})</span>"
        f"{logout}</header><main><section id='queue'>"
        "<form class='filters' method='get' action='/review'>"
        f"<label>Decision<select name='decision'>{decision}</select></label>"
        f"<label>Wafer<input name='wafer_id' value='{escape(f['wafer_id'] or '')}' size='12'></label>"
        f"<label>From<input type='datetime-local' name='since' value='{escape(f['since'] or '')}'></label>"
        f"<label>To<input type='datetime-local' name='until' value='{escape(f['until'] or '')}'></label>"
        f"<label>Reviewed too<input type='checkbox' name='include_reviewed' value='true'{checked}></label>"
        "<button type='submit'>Filter</button></form>"
        f"{warn}<table><thead><tr><th>id</th><th>wafer</th><th>point</th><th>decision</th><th>score</th>"
        f"<th>time (UTC)</th><th>reviews</th></tr></thead><tbody>{trs}</tbody></table>{empty}</section>"
        "<section id='detail'><div class='stack'><img id='image' alt='inspection image'>"
        "<img id='heatmap' alt='heatmap'></div>"
        "<p><label>Heatmap opacity <input type='range' id='opacity' min='0' max='100' value='45'></label></p>"
        "<p id='facts'></p><p><textarea id='note' rows='2' cols='48' placeholder='note (optional)'></textarea></p>"
        "<p><button id='defect'>Defect <kbd>d</kbd></button> <button id='normal'>Normal <kbd>n</kbd></button> "
        "<kbd>j</kbd>/<kbd>k</kbd> next/previous</p><p id='status' role='status'></p>"
        "<pre id='history'></pre></section></main>"
    )
    return _page("greyanom review", body, _SCRIPT)

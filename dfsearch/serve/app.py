"""The page: Gradio Blocks around ``classify`` (the numbers) and the run's report.

Tab "Classify": upload one or more images; the results table gives, per file, the ensemble's
calibrated P(fake) (printed as ``dfsearch predict`` prints it, 4 decimals), the decision at the
ensemble's threshold and each member's own calibrated P(fake) and vote; files that cannot be read
are listed by name with the reason (the others still get results); the gallery shows the top
member's heatmap (``explain``) on each image, labelled with its method. Tab "Report": the run's
``report.html`` (``dfsearch report RUN``), read when the tab is opened, or the command that makes it.

The HTML is built here as plain strings (``results_html``, ``errors_html``, ``report_html``) with
stable ids and classes (``#dfs-results tr[data-file]``, ``td.prob``, ``td.label``,
``#dfs-errors .dfs-error[data-file]``), so that a test, a script or a browser reads the same
numbers; everything from a user (file names) is escaped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from dfsearch.serve.classify import MAX_HEATMAPS, VOTE_THRESHOLD, Loaded, classify

REPORT_FILE = "report.html"
# what makes a folder a run folder (= dfsearch.report.folder.MARKERS; not imported: the report
# package is optional to this page, which only shows the file it writes)
RUN_MARKERS = ("search.json", "trials.parquet", "predictions.parquet")

CSS = """
#dfs-results table { border-collapse: collapse; }
#dfs-results th, #dfs-results td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }
#dfs-results td.prob, #dfs-results td.member { font-family: monospace; }
#dfs-results td.label.fake, #dfs-results span.fake { color: #b00020; font-weight: 600; }
#dfs-results td.label.real, #dfs-results span.real { color: #006400; font-weight: 600; }
.dfs-error { color: #b00020; font-weight: 600; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def results_html(rows: list[dict], ens: Loaded) -> str:
    """The results table: file, P(fake), decision, one column per member (P(fake) and vote)."""
    if not rows:
        return ""
    head = "".join(f'<th title="{_e(m.checkpoint)}">{_e(m.candidate)}<br><small>{_e(m.arch)}, weight '
                   f'{m.weight:.2f}</small></th>' for m in ens.members)
    body = []
    for r in rows:
        members = "".join(f'<td class="member" data-candidate="{_e(v["candidate"])}">{v["prob_fake"]:.4f} '
                          f'<span class="{v["vote"]}">{v["vote"]}</span></td>' for v in r["members"])
        body.append(f'<tr data-file="{_e(r["file"])}"><td class="file">{_e(r["file"])}</td>'
                    f'<td class="prob">{r["prob_fake"]:.4f}</td><td class="label {r["label"]}">{r["label"]}</td>'
                    f'{members}</tr>')
    cal = ens.calibration
    note = (f"P(fake): the ensemble's calibrated probability; decision: fake when it is &ge; {cal.threshold:.4f}, "
            f"the threshold the ensemble command chose on val" if cal.calibrated else
            "P(fake): the raw weighted average (this ensemble.json has no calibration); decision at 0.5")
    return (f'<div id="dfs-results"><table><thead><tr><th>file</th><th>P(fake)</th><th>decision</th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table><p><small>{note}. Members: each one\'s own '
            f'calibrated P(fake) and its vote (fake at &ge; {VOTE_THRESHOLD}).</small></p></div>')


def errors_html(errors: list[dict]) -> str:
    """One line per file that could not be read, naming it and why."""
    if not errors:
        return ""
    lines = "".join(f'<p class="dfs-error" data-file="{_e(e["file"])}">cannot read {_e(e["file"])}: '
                    f'{_e(e["reason"])}</p>' for e in errors)
    return f'<div id="dfs-errors">{lines}</div>'


def gallery(rows: list[dict]) -> list[tuple]:
    """``(overlay image, caption)`` per row that has a heatmap."""
    from dfsearch.serve.explain import overlay

    out = []
    for r in rows:
        h = r["heatmap"]
        if h is None:
            continue
        heat = h["heat"]
        empty = "" if heat.values.max() > 0 else " (empty: nothing in the image pushed it towards its call)"
        out.append((overlay(h["image"], heat.values),
                    f"{r['file']}: {heat.method} of {h['member']} for its call '{heat.target}'{empty}"))
    return out


def run_folder(ensemble_json: Path) -> Path | None:
    """The run folder an ensemble belongs to: ``<run>`` of ``<run>/ensemble/ensemble.json``, else
    the store folder it was made from (ensemble.json's ``source``); None when neither is a run folder."""
    candidates = [ensemble_json.resolve().parent.parent]
    try:
        source = json.loads(ensemble_json.read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    if source:
        candidates.append(Path(source))
    return next((c for c in candidates if any((c / m).is_file() for m in RUN_MARKERS)), None)


def report_html(run: Path | None, ensemble_json: Path) -> str:
    """The report of ``run`` in a frame (it is a whole page: its CSS stays inside), or why there is none."""
    if run is None:
        return (f'<div id="dfs-report-missing"><p>{_e(ensemble_json)} does not sit in a run folder '
                f'(&lt;run&gt;/ensemble/ensemble.json, a folder holding {", ".join(RUN_MARKERS)}), so there is no '
                f'run report to show.</p></div>')
    path = run / REPORT_FILE
    try:
        page = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return (f'<div id="dfs-report-missing"><p>No report for this run yet ({_e(path)} does not exist). '
                f'Make it with</p><pre>dfsearch report {_e(run)}</pre><p>then open this tab again.</p></div>')
    except (OSError, UnicodeDecodeError) as e:
        return f'<div id="dfs-report-missing"><p class="dfs-error">cannot read {_e(path)}: {_e(e)}</p></div>'
    # sandbox: the page has no script of its own, and nothing in it may run with the app's origin
    return (f'<iframe id="dfs-report" title="run report" sandbox="" style="width:100%;height:85vh;border:0" '
            f'srcdoc="{_e(page)}"></iframe>')


def build(ens: Loaded):
    """The Gradio Blocks for ``ens`` (not launched)."""
    import gradio as gr

    run = run_folder(ens.path)

    def on_files(files):
        if not files:
            return "", "", []
        rows, errors = classify(ens, [Path(f) for f in files])
        return results_html(rows, ens), errors_html(errors), gallery(rows)

    # uploads are copies in Gradio's temp folder: a long-running server deletes them after an hour
    with gr.Blocks(title="dfsearch: real or fake?", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## dfsearch: real or fake?\nEnsemble `{ens.path}`: {ens.summary()}; device {ens.device}.")
        with gr.Tab("Classify"):
            files = gr.File(label="images (jpg, png, ...): one or more", file_count="multiple", type="filepath")
            errors = gr.HTML(elem_id="dfs-errors-box")
            results = gr.HTML(elem_id="dfs-results-box")
            heatmaps = gr.Gallery(label=f"what the top member ({ens.top.candidate}, {ens.top.arch}) looked at "
                                        f"(the first {MAX_HEATMAPS} images)",
                                  columns=4, object_fit="contain", elem_id="dfs-heatmaps")
            files.change(on_files, inputs=files, outputs=[results, errors, heatmaps])
        with gr.Tab("Report") as report_tab:
            report = gr.HTML(elem_id="dfs-report-box")
        # read each time the tab is opened (not with the page: a report is ~1 MB): a report made later shows up
        report_tab.select(lambda: report_html(run, ens.path), outputs=report)
    return demo

"""tailor browse: the views of a run in a real browser (Debian's headless Chromium, tests/browser.py), the static
copy opened from file://, and the API's answers to bad requests.

The browse run is a copy of the session's demo run (so its subsets, audit and SemDeDup table are this module's
own) with the demo recipe selected, the demo concepts audited and SemDeDup run; a second, tiny run is annotated
from the demo web with a caption that holds a <script> tag.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import Chromium, require_chromium
from helpers import demo_config

from pipelines.browse.server import BrowseServer
from pipelines.browse.views import BrowseError, GridQuery, check_key

SCRIPT_CAPTION = "<script>alert(1)</script> a photo of a dog"
IMG_CAPTION = '<img src=x onerror="alert(2)"> a red circle'
LOCAL = ("http://127.0.0.1:", "file://", "data:", "about:")


# ---------------------------------------------------------------- without a run

@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", "..", "x\\y", "a\x00b", "", "k" * 257])
def test_keys_with_paths_or_control_characters_are_refused(key):
    with pytest.raises(BrowseError, match="not a valid key"):
        check_key(key)


@pytest.mark.parametrize("query, message", [
    ({"clip_min": ["abc"]}, "clip_min: 'abc' is not a number"),
    ({"clip_min": ["0.5"], "clip_max": ["0.1"]}, "clip_min 0.5 is above clip_max 0.1"),
    ({"limit": ["0"]}, r"limit: '0' is outside \[1, 500\]"),
    ({"decision": ["maybe"]}, "decision: 'maybe' is not one of kept, dropped"),
    ({"decision": ["kept"]}, "give subset=NAME too"),
    ({"concept_mode": ["sideways"]}, "concept_mode: 'sideways' is not one of"),
    ({"status": ["ok'; DROP TABLE x"]}, "status: .* is not a valid value"),
    ({"after": ["../x"]}, "after: '../x' is not a valid key"),
    ({"colour": ["red"]}, "unknown parameter"),
    ({"status": ["ok", "timeout"]}, "status: given 2 times"),
])
def test_grid_filters_are_validated_with_a_message(query, message):
    with pytest.raises(BrowseError, match=message):
        GridQuery.parse(query)


# ---------------------------------------------------------------- the runs

@pytest.fixture(scope="module")
def browse_run(demo_run, tmp_path_factory):
    """A copy of the demo run with the demo recipe's subset, the demo audit and SemDeDup."""
    from pipelines.core.verb_options import SemdedupOptions
    from pipelines.verbs.audit import AuditOptions, audit_run
    from pipelines.verbs.select import load_recipe, select
    from pipelines.verbs.semdedup import semdedup

    _, source, web = demo_run
    run = tmp_path_factory.mktemp("browse") / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("subsets", "audit", "dedup", "captions", "evaluate",
                                                               "match", "_staging"))
    select(str(run), load_recipe("demo"), "demo")
    audit_run(str(run), AuditOptions(concepts="demo"), report=False)
    semdedup(str(run), SemdedupOptions())
    return run


@pytest.fixture(scope="module")
def script_run(ray_local, demo_web, tmp_path_factory):
    """A tiny run annotated from the demo web, two of whose captions hold HTML that would run if pasted as HTML."""
    from pipelines.verbs.annotate import annotate

    _, web = demo_web
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    urls = pq.read_table(web / "urls.parquet")
    rows = [r for r in urls.to_pylist() if truth[r["demo_id"]]["expected_status"] == "ok"][:10]
    rows[0]["caption"], rows[1]["caption"] = SCRIPT_CAPTION, IMG_CAPTION
    folder = tmp_path_factory.mktemp("script-run")
    pq.write_table(pa.Table.from_pylist(rows, schema=urls.schema), folder / "urls.parquet")
    annotate(demo_config(folder / "urls.parquet", folder / "run"), progress=False)
    return folder / "run"


@pytest.fixture(scope="module")
def server(browse_run):
    with BrowseServer(str(browse_run)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require_chromium()
    folder = tmp_path_factory.mktemp("chromium")
    with Chromium(folder / "profile") as chromium:
        yield chromium
    outside = [u for u in chromium.requests if not u.startswith(LOCAL)]
    assert not outside, f"the browser asked for something off this machine: {outside[:5]}"


def get(server, path: str, **params) -> tuple[int, dict]:
    url = server.url + path.lstrip("/") + ("?" + urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def shot(browser, tmp_path: Path, name: str) -> None:
    path = browser.screenshot(tmp_path / f"{name}.png")
    assert path.stat().st_size > 10_000


def cards(browser) -> list[str]:
    return browser.evaluate("[...document.querySelectorAll('#grid .card')].map(c => c.dataset.key)")


def annotations(run: Path) -> list[dict]:
    return pq.read_table(run / "annotations").to_pylist()


def concept_names(run: Path, audit: str = "demo") -> dict[int, str]:
    table = pq.read_table(run / "audit" / audit / "concepts.parquet")
    return dict(zip(table.column("concept_id").to_pylist(), table.column("concept").to_pylist(), strict=True))


def image_modes(run: Path, audit: str = "demo") -> dict[str, dict[str, list[str]]]:
    """concept -> image-side mode -> the keys it matches, by hand: only rows whose image was fetched (status ok)
    and tagged (image_concepts not null) are in any image mode; a row with no image is in none."""
    names = concept_names(run, audit)
    status = {r["key"]: r["status"] for r in annotations(run)}
    out: dict[str, dict[str, list[str]]] = {c: {"image": [], "both": [], "misaligned": []} for c in names.values()}
    for t in sorted(pq.read_table(run / "audit" / audit / "tags").to_pylist(), key=lambda t: t["key"]):
        if status[t["key"]] != "ok" or t["image_concepts"] is None:
            continue
        text, image = set(t["text_concepts"] or []), set(t["image_concepts"])
        for cid, name in names.items():
            if cid in image:
                out[name]["image"].append(t["key"])
            if cid in image and cid in text:
                out[name]["both"].append(t["key"])
            if cid in text and cid not in image:
                out[name]["misaligned"].append(t["key"])
    return out


def chart(browser) -> dict:
    """The concepts chart as the page draws it: axis labels, tick labels, the concepts named at their points."""
    return browser.evaluate("""(() => {
        const svg = document.querySelector('svg.rankfreq');
        const texts = sel => [...svg.querySelectorAll(sel)].map(t => t.textContent);
        return {x: texts('text.axis-label.x')[0], y: texts('text.axis-label.y')[0], xticks: texts('.tick.x text'),
                yticks: texts('.tick.y text'), names: texts('text.point-label'), dots: texts('circle').length};
    })()""")


# ---------------------------------------------------------------- the API

@pytest.mark.slow
def test_bad_requests_get_a_4xx_and_a_message_never_a_traceback(server):
    first = min(r["key"] for r in annotations(Path(server.browser.run)))
    last = max(r["key"] for r in annotations(Path(server.browser.run)))
    cases = [
        ("api/sample", {"key": "999999999999999"}, 404, "unknown key '999999999999999'"),
        ("api/image", {"key": "nope"}, 404, "unknown key 'nope'"),
        ("api/sample", {"key": "../../etc/passwd"}, 400, "not a valid key"),
        ("api/image", {"key": "../run.json"}, 400, "not a valid key"),
        ("api/grid", {"after": last}, 404, "page past the end"),
        ("api/grid", {"after": first, "status": "ok", "clip_min": "0.99"}, 404, "page past the end"),
        ("api/duplicates", {"kind": "exact", "after": last}, 404, "page past the end"),
        ("api/grid", {"clip_min": "high"}, 400, "clip_min: 'high' is not a number"),
        ("api/grid", {"subset": "nope"}, 404, "no subset 'nope' (subsets: demo)"),
        ("api/grid", {"subset": "../demo"}, 400, "subset: '../demo' is not a valid value"),
        ("api/grid", {"subset": "demo", "step": "nope"}, 404, "has no step 'nope'"),
        ("api/grid", {"concept": "unicorn"}, 404, "'unicorn' is not a concept of audit 'demo'"),
        ("api/grid", {"limit": "100000"}, 400, "limit"),
        ("api/duplicates", {"kind": "fuzzy"}, 400, "kind: 'fuzzy' is not one of exact, near, semantic"),
        ("api/concepts", {"audit": "coco80"}, 404, "no audit 'coco80'"),
        ("api/search", {}, 400, "q: give a text query"),
        ("api/nothing", {}, 404, "no such page or API"),
        ("../../etc/passwd", {}, 404, "no such page or API"),
        ("api/meta", {"x": "1"}, 400, "unknown parameter"),
    ]
    for path, params, status, message in cases:
        code, body = get(server, path, **params)
        assert (code, message in body.get("error", "")) == (status, True), (path, params, code, body)
        assert "Traceback" not in json.dumps(body)
    request = urllib.request.Request(server.url + "api/meta", headers={"Host": "rebound.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403 and "is not this server's" in json.loads(refused.value.read())["error"]
    request = urllib.request.Request(server.url + "api/grid", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


@pytest.mark.slow
def test_grid_pages_walk_every_matching_key_once_in_order(server):
    run = Path(server.browser.run)
    ok = sorted(r["key"] for r in annotations(run) if r["status"] == "ok")
    seen, after = [], None
    while True:
        params = {"status": "ok", "limit": 37, **({"after": after} if after else {})}
        code, page = get(server, "api/grid", **params)
        assert code == 200, page
        seen += [c["key"] for c in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == ok
    assert get(server, "api/count", status="ok")[1]["count"] == len(ok)
    # a seeded random share: the same keys every time, about the share asked for, a subset of the filter's
    draw = [c["key"] for c in get(server, "api/grid", status="ok", sample=0.25, seed=7, limit=500)[1]["items"]]
    assert draw == [c["key"] for c in get(server, "api/grid", status="ok", sample=0.25, seed=7, limit=500)[1]["items"]]
    assert set(draw) < set(ok) and 0.15 * len(ok) < len(draw) < 0.35 * len(ok)
    assert draw != [c["key"] for c in get(server, "api/grid", status="ok", sample=0.25, seed=8, limit=500)[1]["items"]]


@pytest.mark.slow
def test_image_concept_modes_count_only_rows_whose_image_was_tagged(server):
    """Issue 29: "caption, not image" (misaligned) counted rows with no image (timeouts, 404s, opted out...): a
    row with no image cannot be "the caption says X, the image does not"."""
    run = Path(server.browser.run)
    status = {r["key"]: r["status"] for r in annotations(run)}
    names = concept_names(run)
    failed: dict[str, int] = {}  # concept -> failed rows whose caption names it
    for t in pq.read_table(run / "audit" / "demo" / "tags").to_pylist():
        if status[t["key"]] != "ok":
            for cid in t["text_concepts"] or []:
                failed[names[cid]] = failed.get(names[cid], 0) + 1
    assert failed, "the demo web has failed rows whose caption names a concept"
    expected = image_modes(run)
    for concept in sorted(failed, key=lambda c: (-failed[c], c))[:3]:
        for mode in ("misaligned", "image", "both"):
            code, counted = get(server, "api/count", audit="demo", concept=concept, concept_mode=mode)
            assert code == 200 and counted["count"] == len(expected[concept][mode]), (concept, mode, counted)
            assert counted["count"] == get(server, "api/count", audit="demo", concept=concept, concept_mode=mode,
                                           status="ok")[1]["count"]
            code, page = get(server, "api/grid", audit="demo", concept=concept, concept_mode=mode, limit=500)
            assert [c["key"] for c in page["items"]] == expected[concept][mode]
            assert {c["status"] for c in page["items"]} <= {"ok"}
        # the caption mode still counts every row naming it, whatever its status
        every = get(server, "api/count", audit="demo", concept=concept, concept_mode="caption")[1]["count"]
        ok = get(server, "api/count", audit="demo", concept=concept, concept_mode="caption", status="ok")[1]["count"]
        assert every == ok + failed[concept]


@pytest.mark.slow
def test_search_and_neighbours_rank_stored_images_by_cosine(server):
    code, found = get(server, "api/search", q="a photo of a dog", k=10)
    assert code == 200 and len(found["items"]) == 10
    scores = [c["similarity"] for c in found["items"]]
    assert scores == sorted(scores, reverse=True)
    key = found["items"][0]["key"]
    code, near = get(server, "api/neighbours", key=key, k=5)
    assert code == 200 and len(near["items"]) == 5 and key not in [c["key"] for c in near["items"]]


# ---------------------------------------------------------------- in the browser

@pytest.mark.slow
def test_grid_shows_the_samples_of_a_filter_and_the_near_duplicate_drops(server, browser, tmp_path):
    run = Path(server.browser.run)
    rows = annotations(run)
    ok = sorted(r["key"] for r in rows if r["status"] == "ok")
    assert browser.open(server.url + "#grid?status=ok&limit=500") == "ready"
    assert cards(browser) == ok
    assert browser.wait_for("document.getElementById('count').dataset.count") == str(len(ok))
    shot(browser, tmp_path, "grid-ok")

    decisions = pq.read_table(run / "subsets" / "demo" / "decisions.parquet").to_pylist()
    near = sorted(d["key"] for d in decisions if d["step"] == "near_dedup")
    assert near and all(d["reason"] == "near_duplicate" for d in decisions if d["step"] == "near_dedup")
    assert browser.open(server.url + "#grid?subset=demo&decision=dropped&step=near_dedup&limit=500") == "ready"
    assert cards(browser) == near
    chips = browser.evaluate("[...document.querySelectorAll('#grid .card .decision')].map(d => d.textContent)")
    assert set(chips) == {"near_duplicate (near_dedup)"}
    shot(browser, tmp_path, "grid-near-dedup")

    # a page of 10, then More: the next 10 after the last key shown
    assert browser.open(server.url + "#grid?status=ok&limit=10") == "ready"
    assert cards(browser) == ok[:10]
    assert browser.click("#more") == "ready"
    assert cards(browser) == ok[:20]

    # the full sample: every annotation column, the decision with its step and reason, neighbours
    assert browser.open(server.url + "#grid?subset=demo&step=near_dedup&limit=5") == "ready"
    assert browser.click("#grid .card") == "ready"
    decided = browser.evaluate("[...document.querySelectorAll('#decisions tr[data-subset=demo] td')]"
                               ".map(td => td.textContent)")
    keeper = next(d["detail"] for d in decisions if d["key"] == near[0])
    assert decided == ["demo", "false", "near_dedup", "near_duplicate", keeper]
    columns = browser.evaluate("[...document.querySelectorAll('table.kv th')].map(th => th.textContent)")
    assert set(pq.read_schema(next((run / "annotations").iterdir())).names) <= set(columns)
    assert browser.evaluate("document.querySelectorAll('#neighbours .card').length") > 0
    shot(browser, tmp_path, "sample")
    assert browser.dialogs == []


def test_concepts_open_on_an_audit_with_counts_not_on_recaptions_tags_alone(browse_run):
    """`recaption --concepts` tags concepts without counting them (no counts.parquet): such an audit, even first
    by name, is not what the concepts view and the grid's concept filter open on."""
    from pipelines.browse.views import Browser, NotFound

    tags_only = browse_run / "audit" / "aaa"
    shutil.copytree(browse_run / "audit" / "demo", tags_only, ignore=shutil.ignore_patterns("counts.parquet"))
    try:
        browser = Browser(str(browse_run))
        assert [a["name"] for a in browser.meta()["audits"]] == ["demo", "aaa"]
        assert browser.concepts({})["audit"] == "demo"
        with pytest.raises(NotFound, match="no counts.parquet yet"):
            browser.concepts({"audit": ["aaa"]})
    finally:
        shutil.rmtree(tags_only)


@pytest.mark.slow
def test_concept_page_links_each_concept_to_its_samples(server, browser, tmp_path):
    run = Path(server.browser.run)
    counts = {r["concept"]: r for r in pq.read_table(run / "audit" / "demo" / "counts.parquet").to_pylist()}
    assert browser.open(server.url + "#concepts") == "ready"
    listed = browser.evaluate("[...document.querySelectorAll('#concept-table tr[data-concept]')]"
                              ".map(tr => tr.dataset.concept)")
    assert sorted(listed) == sorted(counts)
    tail = [counts[c]["tail"] for c in listed]
    assert tail == sorted(tail, reverse=True)  # tail first, then the rest, each rarest first
    for part in (True, False):
        frequencies = [counts[c]["frequency"] for c in listed if counts[c]["tail"] == part]
        assert frequencies == sorted(frequencies)
    # the chart's axes say what is counted and the ranks; the head concept is named at its point
    drawn, unit = chart(browser), get(server, "api/concepts", audit="demo")[1]["unit"]
    assert drawn["x"].startswith("concept rank (1 = most frequent)") and drawn["y"].startswith(unit), drawn
    assert unit == "caption rows naming the concept (ok rows)"  # the demo audit counts by text frequency
    drawn_ranks = [c["rank"] for c in counts.values() if c["frequency"] > 0]
    assert drawn["xticks"] == [str(10 ** i) for i in range(len(str(max(drawn_ranks))))]  # 1, 10, ... <= max rank
    assert drawn["yticks"][:2] == ["1", "10"]
    head = min(counts.values(), key=lambda c: (c["rank"], c["concept"]))["concept"]
    assert drawn["names"][0].startswith(head) and drawn["dots"] == len(drawn_ranks)
    shot(browser, tmp_path, "concepts")
    # the most frequent concept's caption link: every caption row naming it (text_count_all counts them all)
    top = listed[-1]
    assert browser.click(f"#concept-table tr[data-concept='{top}'] a.concept-link[data-mode=caption]") == "ready"
    shown = browser.evaluate("[...document.querySelectorAll('#grid .card')].length")
    assert browser.wait_for("document.getElementById('count').dataset.count") == str(counts[top]["text_count_all"])
    assert shown == min(100, counts[top]["text_count_all"])
    tags = browser.evaluate("[...document.querySelectorAll('#grid .card .tags')].map(t => t.textContent)")
    assert all(top in t for t in tags)
    # misaligned: captions naming it whose image was fetched, tagged, and not tagged with it
    assert browser.open(server.url + "#grid?" + urlencode({"concept": top, "concept_mode": "misaligned",
                                                           "limit": 500})) == "ready"
    assert cards(browser) == image_modes(run)[top]["misaligned"]


@pytest.mark.slow
def test_duplicates_show_exact_near_and_semantic_groups_with_the_member_kept(server, browser, tmp_path):
    run = Path(server.browser.run)
    assert browser.open(server.url + "#duplicates") == "ready"
    groups = browser.evaluate("""Object.fromEntries(['exact', 'near', 'semantic'].map(kind => [kind,
        [...document.querySelectorAll('#dup-' + kind + ' .group')].map(g => ({kept: g.dataset.kept,
          keeper: [...g.querySelectorAll('.card.keeper')].map(c => c.dataset.key),
          members: [...g.querySelectorAll('.card')].map(c => c.dataset.key)}))]))""")
    shot(browser, tmp_path, "duplicates")
    decisions = {d["key"]: d for d in pq.read_table(run / "subsets" / "demo" / "decisions.parquet").to_pylist()}
    assert groups["near"], "the demo web has near duplicates"
    for g in groups["near"]:
        assert g["keeper"] == [g["kept"]] and g["members"][0] == g["kept"]
        assert all(decisions[m]["reason"] == "near_duplicate" and decisions[m]["detail"] == g["kept"]
                   for m in g["members"][1:])
    sha = {r["key"]: r["sha256"] for r in annotations(run)}
    exact_drops: dict[str, set[str]] = {}  # select's exact_dedup: the key it kept -> the keys it dropped for it
    for d in decisions.values():
        if d["step"] == "exact_dedup":
            assert d["reason"] == "exact_duplicate"
            exact_drops.setdefault(d["detail"], set()).add(d["key"])
    assert groups["exact"]
    for g in groups["exact"]:
        assert g["keeper"] == [g["kept"]] and g["members"][0] == g["kept"] and len(g["members"]) > 1
        assert len({sha[m] for m in g["members"]}) == 1
        # the member shown as kept is the one select's exact_dedup kept (a later step may still drop it), and
        # the others are exactly the rows exact_dedup dropped for it
        assert decisions[g["kept"]]["step"] != "exact_dedup"
        assert set(g["members"][1:]) == exact_drops.get(g["kept"], set())
    semantic = {r["key"]: r["dup_of"] for r in pq.read_table(run / "dedup" / "semdedup.parquet").to_pylist()}
    assert groups["semantic"]
    for g in groups["semantic"]:
        assert semantic[g["kept"]] is None and all(semantic[m] == g["kept"] for m in g["members"][1:])


DEDUP_RECIPE = """\
description: exact duplicates removed, the best-scored 5% kept, then near duplicates at pHash distance 0
steps:
  - step: exact_dedup
  - step: clip_score
    top_fraction: 0.05
  - step: near_dedup
    max_hamming: 0
"""


@pytest.mark.slow
def test_duplicates_page_reports_the_browsed_subsets_near_dedup_that_found_none(browse_run, browser, tmp_path):
    """Issue 29: a subset whose near_dedup step ran and dropped nothing was reported as "the run has none", the
    page ignored the subset browse was opened on, and a run of real photos was pointed at the demo recipe."""
    from pipelines.verbs.select import load_recipe, select

    (tmp_path / "dedup.yaml").write_text(DEDUP_RECIPE)
    stats = select(str(browse_run), load_recipe(str(tmp_path / "dedup.yaml")), "dedup")
    try:
        near = next(s for s in stats["steps"] if s["name"] == "near_dedup")
        assert near["rows_in"] > 0 and near["dropped"] == 0, near  # the case of the issue
        with BrowseServer(str(browse_run)) as running:
            code, page = get(running, "api/duplicates", kind="near", subset="dedup")
            assert code == 200 and page["groups"] == [] and page["subset"] == "dedup"
            assert page["step"] == {"name": "near_dedup", "max_hamming": 0, "rows_in": near["rows_in"], "dropped": 0}
            said = (f"subset 'dedup': its near_dedup step (max_hamming 0) ran over {near['rows_in']} rows "
                    "and found no near-duplicate")
            assert page["note"] == said
            # without a subset: the one whose near_dedup dropped rows
            code, page = get(running, "api/duplicates", kind="near")
            assert code == 200 and page["subset"] == "demo" and page["groups"] and page["note"] is None
            # the page opened as `tailor browse RUN --subset dedup` opens it, then its Duplicates link
            assert browser.open(running.url + "#grid?subset=dedup") == "ready"
            assert browser.click("nav a[data-view=duplicates]") == "ready"
            assert browser.evaluate("location.hash") == "#duplicates?subset=dedup"
            column = browser.evaluate("(() => { const c = document.getElementById('dup-near'); return "
                                      "{subset: c.dataset.subset, text: c.querySelector('.summary').textContent, "
                                      "groups: c.querySelectorAll('.group').length}; })()")
            assert column == {"subset": "dedup", "text": said, "groups": 0}
            shot(browser, tmp_path, "duplicates-dedup")
            # the subset chosen in the grid is the one the Duplicates page shows
            assert browser.open(running.url + "#grid?subset=demo") == "ready"
            assert browser.click("nav a[data-view=duplicates]") == "ready"
            assert browser.evaluate("document.getElementById('dup-near').dataset.subset") == "demo"
            assert browser.evaluate("document.querySelectorAll('#dup-near .group').length") > 0
            summary = browser.evaluate("document.querySelector('#dup-near .summary').textContent")
            assert summary.endswith("groups (subset demo, near_dedup max_hamming 4)"), summary
    finally:
        shutil.rmtree(browse_run / "subsets" / "dedup")


@pytest.mark.slow
def test_near_dedup_hint_names_the_demo_recipe_only_on_a_demo_run(script_run, tmp_path):
    """A run with no near_dedup subset: the hint names `--recipe demo` on a run of the demo web, and on any other
    run (here the same rows without the demo web's demo_id) the step to add."""
    other = tmp_path / "photos"
    shutil.copytree(script_run, other)
    for shard in (other / "annotations").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["demo_id"]), shard)
    for run, demo in ((script_run, True), (other, False)):
        with BrowseServer(str(run)) as running:
            code, page = get(running, "api/duplicates", kind="near")
        assert code == 200 and page["groups"] == [] and page["subset"] is None
        assert page["note"].startswith("the run has no subset; near-duplicate groups come from one: "), page
        assert ("--recipe demo" in page["note"]) == demo, page["note"]
        if not demo:
            assert "add a near_dedup step to your recipe (`- step: near_dedup` with `max_hamming: 4`" in page["note"]


@pytest.mark.slow
def test_search_page_shows_the_images_nearest_to_a_text(server, browser, tmp_path):
    assert browser.open(server.url + "#search?" + urlencode({"q": "a photo of a dog"})) == "ready"
    code, found = get(server, "api/search", q="a photo of a dog")
    assert code == 200 and cards(browser) == [c["key"] for c in found["items"]] and len(found["items"]) == 48
    shot(browser, tmp_path, "search")


@pytest.mark.slow
def test_a_caption_with_a_script_tag_renders_as_text(script_run, browser, tmp_path):
    with BrowseServer(str(script_run)) as running:
        assert browser.open(running.url + "#grid") == "ready"
        captions = browser.evaluate("[...document.querySelectorAll('#grid .card .caption')].map(c => c.textContent)")
        assert SCRIPT_CAPTION in captions and IMG_CAPTION in captions
        assert browser.evaluate("document.querySelectorAll('main script, main img[src=x]').length") == 0
        shot(browser, tmp_path, "script-caption-grid")
        key = next(r["key"] for r in annotations(script_run) if r["caption"] == SCRIPT_CAPTION)
        assert browser.open(running.url + f"#sample?key={quote(key)}") == "ready"
        assert browser.evaluate("document.getElementById('caption').textContent") == SCRIPT_CAPTION
        shot(browser, tmp_path, "script-caption-sample")
    assert browser.dialogs == []


@pytest.mark.slow
def test_static_copy_opens_from_file_without_a_server(script_run, browse_run, browser, tmp_path):
    from pipelines.browse.export import export

    for run, limit in ((script_run, 100), (browse_run, 40)):
        out = tmp_path / f"copy-{run.parent.name}"
        summary = export(str(run), out, limit=limit, groups=5)
        rows = sorted(annotations(run), key=lambda r: r["key"])[:limit]
        assert summary["samples"] == len(rows)
        page = out.resolve().as_uri() + "/index.html"
        assert browser.open(page + "#grid?limit=500") == "ready"
        assert cards(browser) == [r["key"] for r in rows]
        assert browser.evaluate("document.querySelectorAll('#grid .card img').length") == sum(
            r["status"] == "ok" for r in rows)
        assert browser.wait_for("[...document.querySelectorAll('#grid .card img')].slice(0, 4).every(i => "
                                "i.complete && i.naturalWidth > 0)")  # the images in view (the rest load lazily)
        ok = [r["key"] for r in rows if r["status"] == "ok"]
        assert browser.open(page + "#grid?status=ok&limit=500") == "ready"
        assert cards(browser) == ok
        assert browser.click("#grid .card") == "ready"
        assert browser.evaluate("document.querySelector('h2').textContent") == f"Sample {ok[0]}"
        assert browser.open(page + "#duplicates") == "ready"
        shot(browser, tmp_path, f"static-{run.parent.name}")
    assert browser.open(page + "#concepts") == "ready"
    assert browser.evaluate("document.querySelectorAll('#concept-table tr[data-concept]').length") == 136
    drawn = chart(browser)  # the static page draws the live page's axes
    assert drawn["x"].startswith("concept rank (1 = most frequent)"), drawn
    assert drawn["y"].startswith("caption rows naming the concept (ok rows)") and drawn["xticks"][:2] == ["1", "10"]
    # one thumbnail file per distinct image: rows with the same image (exact duplicates) share it
    data = json.loads((out / "data" / "static.js").read_text().split(" = ", 1)[1].rstrip().rstrip(";"))
    thumbs = data["thumbs"]
    files = sorted(f.name for f in (out / "thumbs").iterdir())
    assert files == sorted(set(thumbs.values()))
    sha = {r["key"]: r["sha256"] for r in annotations(browse_run)}
    by_image: dict[str, set[str]] = {}
    for key, name in thumbs.items():
        by_image.setdefault(sha[key], set()).add(name)
    assert all(len(names) == 1 for names in by_image.values()) and len(files) == len(by_image)
    assert len(files) < len(thumbs), "the copy holds exact duplicates (its exact groups), stored once"
    exact = data["duplicates"]["exact"]["groups"][0]["members"]
    assert len({thumbs[m["key"]] for m in exact}) == 1
    assert browser.open(page + "#duplicates") == "ready"  # the members' images, one file, load
    assert browser.wait_for("(() => { const i = [...document.querySelector('#dup-exact .group').querySelectorAll"
                            f"('img')]; return i.length === {len(exact)} && i.every(x => x.complete && "
                            "x.naturalWidth > 0); })()")
    # misaligned in the copy: only its rows whose image was fetched and tagged
    modes, in_copy = image_modes(browse_run), {r["key"] for r in rows}
    names = concept_names(browse_run)
    failed = sorted(names[c] for t in pq.read_table(browse_run / "audit" / "demo" / "tags").to_pylist()
                    if t["key"] in in_copy and t["status"] != "ok" for c in t["text_concepts"] or [])
    assert failed, "the copy holds failed rows whose caption names a concept"
    concept = failed[0]
    assert browser.open(page + "#grid?" + urlencode({"concept": concept, "concept_mode": "misaligned",
                                                     "limit": 500})) == "ready"
    assert cards(browser) == [k for k in modes[concept]["misaligned"] if k in in_copy]
    # the near groups of the subset the copy is opened on
    assert browser.open(page + "#grid?subset=demo") == "ready"
    assert browser.click("nav a[data-view=duplicates]") == "ready"
    assert browser.evaluate("document.getElementById('dup-near').dataset.subset") == "demo"
    assert browser.open(page + "#grid?subset=demo&step=near_dedup&limit=500") == "ready"
    decisions = pq.read_table(browse_run / "subsets" / "demo" / "decisions.parquet").to_pylist()
    assert cards(browser) == sorted(d["key"] for d in decisions if d["step"] == "near_dedup"
                                    and d["key"] <= rows[-1]["key"])
    assert browser.dialogs == []
    assert all(u.startswith(("file://", "data:", "about:")) for u in browser.requests[-20:])


@pytest.mark.slow
def test_cli_serves_on_loopback_and_prints_the_url(browse_run):
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "browse", str(browse_run), "--subset", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("browsing ") and "http://127.0.0.1:" in line and line.rstrip().endswith(
            "#grid?subset=demo (read-only; Ctrl-C stops)"), line
        url = line.split(" at ", 1)[1].split("#", 1)[0]
        with urllib.request.urlopen(url + "api/meta", timeout=30) as response:
            assert json.loads(response.read())["subsets"][0]["name"] == "demo"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    refused = subprocess.run([sys.executable, "-m", "pipelines.cli", "browse", str(browse_run), "--subset", "nope"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"tailor: {browse_run} has no subset 'nope' (subsets: demo)"]

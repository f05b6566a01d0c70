"""tailor browse RUN --out DIR: the browse views as a static folder that opens from file:// with no server.

    DIR/index.html, app.js, app.css    the same page as the server's
    DIR/data/static.js                 window.TAILOR_STATIC = {meta, samples, thumbs, details, duplicates,
                                       near, concepts}
    DIR/data/samples/ID.js             one sample's detail view (loaded by a <script> tag: browsers refuse
                                       fetch() of file:// URLs, but not scripts)
    DIR/thumbs/SHA.EXT                 the stored images of the samples in the copy, one file per distinct image
                                       (named by the sha256 of its bytes): COCO's five caption rows per photo,
                                       or a web image under several URLs, share one file

A copy is bounded: the first `limit` samples by key (the grid's filters then run in the page over them) and
the first `groups` duplicate groups of each kind (their members' details and images are included too).
File names are a hash of the key (or of the image), never the key itself. `near` holds the first near-duplicate
groups of each subset (as the server answers kind=near&subset=NAME), so the Duplicates page shows the subset the
copy is opened on. JSON is written with '<' escaped, so no value can end a script element.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from pipelines.browse.server import STATIC
from pipelines.browse.views import DUPLICATE_KINDS, BrowseError, Browser, GridQuery

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}


def file_id(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def image_id(data: bytes) -> str:
    """A stored image's file name: the sha256 of its bytes (identical images, one file)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _script(variable: str, value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"{variable}{text});\n" if variable.endswith("(") else f"{variable} = {text};\n"


def export(run: str, out: str | Path, limit: int = 1000, groups: int = 20, neighbours: int = 12) -> dict:
    """Write the static copy of run's views to out (replaced when it is an earlier copy); returns counts."""
    out = Path(os.path.abspath(out))  # `..` resolved: the staging folder must be OUT's sibling
    if out.exists() and any(out.iterdir()) and not (out / "data" / "static.js").exists():
        raise BrowseError(f"{out} exists and is not a browse copy; give an empty or new folder")
    browser = Browser(run)
    samples: list[dict] = []
    after = None
    while len(samples) < limit:
        page = browser.grid(GridQuery(after=after, limit=min(500, limit - len(samples))))
        samples.extend(page["items"])
        after = page["next"]
        if after is None:
            break
    decisions, tags = browser.decisions_and_tags(samples[0]["key"], samples[-1]["key"]) if samples else ({}, {})
    records = [{"key": s["key"], "caption": s["caption"], "status": s["status"], "clip_score": s["clip_score"],
                "lang": s["lang"], "decisions": decisions.get(s["key"], {}), "tags": tags.get(s["key"], {})}
               for s in samples]
    duplicates = {}
    for kind in DUPLICATE_KINDS:
        page = browser.duplicates({"kind": [kind], "limit": [str(groups)]})
        page["next"] = None  # the copy holds the first pages only
        duplicates[kind] = page
    near = {}  # each subset's own near groups (or the note on why there are none)
    for name in browser.subsets:
        page = browser.duplicates({"kind": ["near"], "subset": [name], "limit": [str(groups)]})
        page["next"] = None
        near[name] = page
    pages = [*duplicates.values(), *near.values()]
    concepts = {name: browser.concepts({"audit": [name]}) for name in browser.audits
                if browser.audits[name].counted}

    # written beside OUT and moved into place at the end: a failure leaves neither a half copy nor
    # a folder the next attempt refuses
    staging, previous = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.previous")
    for leftover in (staging, previous):  # from a copy killed before it finished
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        (staging / "data" / "samples").mkdir(parents=True)
        (staging / "thumbs").mkdir()
        detail_keys = [s["key"] for s in samples]
        detail_keys += [m["key"] for page in pages for g in page["groups"] for m in g["members"]]
        details, thumbs = {}, {}
        for key in dict.fromkeys(detail_keys):
            sample = browser.sample(key, neighbours=neighbours)
            details[key] = f"{file_id(key)}.js"
            (staging / "data" / "samples" / details[key]).write_text(_script("window.tailorSample(", sample))
            for k in [key, *(n["key"] for n in sample["neighbours"])]:
                if k in thumbs:
                    continue
                try:
                    data, content_type = browser.image(k)
                except BrowseError:
                    continue
                # one file per distinct image: rows holding the same bytes point at it
                thumbs[k] = f"{image_id(data)}.{EXTENSIONS.get(content_type, 'bin')}"
                if not (staging / "thumbs" / thumbs[k]).exists():
                    (staging / "thumbs" / thumbs[k]).write_bytes(data)
        meta = {**browser.meta(), "static": True, "static_limit": limit}
        meta["run"] = Path(browser.run).name
        data = {"meta": meta, "samples": records, "thumbs": thumbs, "details": details,
                "duplicates": duplicates, "near": near, "concepts": concepts}
        (staging / "data" / "static.js").write_text(_script("window.TAILOR_STATIC", data))
        for name in ("app.js", "app.css"):
            shutil.copyfile(STATIC / name, staging / name)
        page = (STATIC / "index.html").read_text()
        (staging / "index.html").write_text(page.replace("<!-- DATA -->", '<script src="data/static.js"></script>'))
        if out.exists():  # the earlier copy moves aside until the new one is in place
            out.rename(previous)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists() and not out.exists():
            previous.rename(out)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return {"out": str(out), "samples": len(records), "details": len(details), "images": len(set(thumbs.values())),
            "thumbed_rows": len(thumbs), "index": str(out / "index.html")}

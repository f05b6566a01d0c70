"""Labelled text for measuring caption language ID (issue 30), built offline from what the machine holds.

- `coco_captions()`: COCO's human captions of shared/data/coco-mini (all English, 5 a photo).
- `caption_fragments()`: their first 2-5 words: short English caption text.
- `alt_texts()`: the 10k real web alt-texts of shared/data/alt-text (a distribution of labels), and
  `hand_labels()`: a stratified sample of 350 of them labelled by hand.
- `gettext_samples()`: (text, language) pairs from the machine's gettext catalogues,
  /usr/share/locale/<locale>/LC_MESSAGES/*.mo: every translated message (msgstr) is short text in a known
  language, written by people; the English source strings (msgid) give English. Cleaned: format strings,
  markup, paths, URLs and option names dropped, keyboard accelerators (`_F`, `&F`) removed, only strings of
  3 to 15 words (CJK, Thai and other unspaced scripts: 4 to 40 characters), none equal to its English source,
  duplicates dropped. Capped per language, sampled with a fixed seed, so a rerun measures the same texts.

Languages are labelled in the code space of `caption_lang` (ISO 639-1 where a language has one, else
ISO 639-3, as py3langid gives them); locales in another script than the one the model knows for the
language (be@latin, uz@cyrillic, az_IR, Latin-script tt), English variants and catalogues of names (iso_639, iso_3166:
names, not text) are left out.
"""

from __future__ import annotations

import gettext
import json
import os
import random
import re
from functools import cache
from pathlib import Path

from helpers import shared_data  # tests/ on sys.path: pytest's rootdir conftest, or benchmarks/lid.py

LOCALE_DIR = Path(os.environ.get("TAILOR_LOCALE_DIR", "/usr/share/locale"))

# locale folder -> caption_lang code, where the folder's language code is not already that
LOCALE_CODES = {
    "nb": "no", "nb_NO": "no", "mo": "ro", "ro_MD": "ro", "fil": "tl", "kmr": "ku", "sr@latin": "sr",
    "sr@Latn": "sr", "sr@ije": "sr", "zh_CN": "zh", "zh_TW": "zh", "zh_HK": "zh", "zh_Hans": "zh",
    "zh_Hant": "zh", "pt_BR": "pt", "pt_PT": "pt", "de_CH": "de", "bn_BD": "bn", "bn_IN": "bn",
    "ca@valencia": "ca", "kw_GB": "kw", "pa_PK": None, "az_IR": None, "be@latin": None, "uz@cyrillic": None,
    "tt": None, "tt@iqtelif": None,  # Latin-script Tatar; py3langid knows Cyrillic Tatar
    "en@shaw": None, "en@quot": None, "en@boldquot": None,
}
UNSPACED = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0f00-\u0fff]")
FORMAT = re.compile(r"%[-#0 +'I]*\d*(?:\.\d+)?(?:hh|h|ll|l|L|z|j|t|q)?[a-zA-Z%]|%\d+|\{[^}]*\}|\$\{|<[^>]+>|&\w+;")
UNWANTED = re.compile(r"https?:|www\.|@\w+\.|/\w+/|\\|--?\w|\w+\(\)|\w+_\w+|\w+\.\w+\.|[|`*=#\[\]]|\t|\n")
TRAILER = re.compile(r"\s*\([A-Za-z]\)|\s*\.\.\.$|…$|:$")
NOT_LETTER = re.compile(r"[\W\d_]")
ACCELERATOR = re.compile(r"(?<=\w)[_&~](?=\w)|(?<![\w])[_&~](?=\w)")


def _catalogue(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return gettext.GNUTranslations(f)._catalog
    except Exception:  # a file gettext cannot read: skipped
        return {}


def _clean(text: str) -> str | None:
    """The message as plain short text, or None where it is no sentence-like text of 3-15 words."""
    if not isinstance(text, str) or len(text) > 200 or "\n" in text or FORMAT.search(text) or UNWANTED.search(text):
        return None
    text = ACCELERATOR.sub("", text)
    text = TRAILER.sub("", text.strip()).strip()  # "(_F)" accelerators, "Open…", "Name:"
    if not text or len(NOT_LETTER.sub("", text)) < 0.7 * len(text.replace(" ", "")):
        return None
    if UNSPACED.search(text):
        return text if 4 <= len(text) <= 40 else None
    return text if 3 <= len(text.split()) <= 15 else None


def locale_code(folder: str) -> str | None:
    if folder in LOCALE_CODES:
        return LOCALE_CODES[folder]
    if folder.startswith("en") or "@" in folder:
        return None
    return folder.split("_")[0]


@cache
def _folder_messages(folder: Path, english: bool = False) -> frozenset[str]:
    """A locale folder's cleaned translated messages; `english`: their cleaned English sources instead."""
    texts = set()
    for mo in sorted((folder / "LC_MESSAGES").glob("*.mo")):
        if mo.name.startswith("iso_"):  # names of languages, countries, scripts, currencies
            continue
        for msgid, msgstr in _catalogue(mo).items():
            if isinstance(msgid, tuple):  # a plural form: (msgid, n)
                msgid = msgid[0]
            if not msgid or not msgstr or "\x04" in msgid:  # header; message with a context
                continue
            if english:
                text = _clean(msgid)
            elif msgstr.lower() == msgid.lower():  # untranslated
                continue
            else:
                text = _clean(msgstr)
                if text is not None and text == _clean(msgid):
                    continue
            if text:
                texts.add(text)
    return frozenset(texts)


def messages(lang: str) -> list[str]:
    """The cleaned messages of a language (sorted, distinct): every locale folder of it; English: the
    source strings of the German catalogues (the same sources every catalogue translates)."""
    if lang == "en":
        return sorted(_folder_messages(LOCALE_DIR / "de", english=True)) if (LOCALE_DIR / "de").is_dir() else []
    texts: set[str] = set()
    for folder in sorted(os.listdir(LOCALE_DIR)):
        if locale_code(folder) == lang and (LOCALE_DIR / folder / "LC_MESSAGES").is_dir():
            texts |= _folder_messages(LOCALE_DIR / folder)
    return sorted(texts)


def locale_languages() -> list[str]:
    """Every language with a locale folder, English included."""
    if not LOCALE_DIR.is_dir():
        return []
    return sorted({locale_code(f) for f in os.listdir(LOCALE_DIR)} - {None} | {"en"})


def gettext_samples(per_language: int = 300, min_samples: int = 100, seed: int = 0,
                    languages: list[str] | None = None) -> list[tuple[str, str]]:
    """(text, language) pairs: at most `per_language` of each language that has `min_samples` (English
    included, from the source strings); only `languages` where given. Empty where there is no LOCALE_DIR."""
    pairs = []
    for lang in sorted(languages) if languages is not None else locale_languages():
        texts = messages(lang) if LOCALE_DIR.is_dir() else []
        if len(texts) < min_samples:
            continue
        rng = random.Random(f"{seed}-{lang}")
        pairs += [(t, lang) for t in rng.sample(texts, min(per_language, len(texts)))]
    return pairs


def coco_captions() -> list[str]:
    data = json.loads((shared_data() / "coco-mini" / "captions_train2017.json").read_text())
    return [a["caption"].strip() for a in data["annotations"]]


def caption_fragments(captions: list[str], words: int) -> list[str]:
    """The distinct first `words` words of each caption (a trailing comma or full stop dropped): short English
    caption text, as CC3M's and alt-text's are, where whole COCO captions (about 10 words) are easy."""
    return sorted({" ".join(c.split()[:words]).rstrip(".,") for c in captions if len(c.split()) >= words})


def alt_texts() -> list[str]:
    """Every row's TEXT of the 10k alt-texts, stripped ('' for a null), in the file's order (HAND_LABELS' rows)."""
    import pyarrow.parquet as pq

    table = pq.read_table(shared_data() / "alt-text" / "alt_text_10k.parquet", columns=["TEXT"])
    return [(t or "").strip() for t in table.column("TEXT").to_pylist()]


# A hand-labelled sample of the 10k alt-texts (row: label), read one by one (issue 30). Drawn at random (seed 30)
# from two strata of py3langid's labels without a prior: 250 of the 3,058 rows it labelled other than English
# (NOT_ENGLISH) and 100 of the 6,942 it labelled English (ENGLISH). Labels: `en` English (brand, place and
# people's names and model numbers inside English text included: "Philips HD9240/94 Avance XL Digital Airfryer");
# a code for text plainly in another language ("Segelboot am See Union mit Seattle skyline": de); `xx` plainly
# not English but mixed or of unsure language ("MAISON SCOTCH T-SHIRT - 51740 BLÅ"); `?` nothing to tell a
# language by (names, codes, file names alone: "Salman Khan", "2003 GMC Envoy Washington"), left out of rates.
HAND_LABELS = {
    "NOT_ENGLISH": """
    38:en 47:en 60:en 85:en 98:? 170:? 252:en 253:? 264:es 297:en 326:fr 329:en 330:xx 370:en 389:? 414:en 469:?
    630:en 865:en 927:en 948:en 1002:en 1013:en 1048:en 1109:en 1122:en 1299:en 1328:en 1345:en 1369:ja 1398:en
    1412:fr 1451:en 1457:? 1538:en 1579:en 1650:en 1651:en 1662:? 1673:en 1712:en 1776:en 1820:en 1832:en 1888:en
    1895:en 1898:en 1954:no 1962:en 1966:en 1970:en 2071:xx 2191:? 2193:en 2219:en 2296:? 2303:en 2379:it 2390:?
    2451:en 2473:en 2541:en 2554:en 2558:en 2575:en 2582:en 2604:en 2635:? 2649:en 2663:? 2738:? 2754:en 2863:en
    2900:en 3007:en 3049:en 3085:en 3240:en 3280:en 3286:en 3289:en 3406:? 3414:en 3441:? 3459:en 3484:en 3504:en
    3573:en 3612:en 3704:en 3732:en 3780:ru 3802:en 3873:en 3908:en 3922:en 3926:en 3957:en 3994:en 4024:en 4030:en
    4048:en 4060:en 4098:en 4164:en 4169:en 4182:en 4199:en 4222:en 4326:en 4334:en 4467:en 4491:en 4495:en 4498:en
    4520:? 4562:? 4629:en 4643:? 4695:en 4729:en 4786:en 4981:en 5039:en 5040:en 5041:en 5079:pt 5126:en 5132:en
    5143:? 5231:en 5256:en 5274:en 5313:en 5345:fr 5399:en 5418:en 5422:en 5503:en 5538:en 5618:en 5624:en 5668:en
    5704:en 5761:? 5805:? 5854:en 5947:en 6009:? 6010:nl 6079:en 6126:en 6228:en 6249:en 6308:en 6336:en 6347:de
    6379:en 6398:en 6401:en 6403:en 6407:en 6424:es 6430:en 6462:? 6512:? 6532:en 6583:de 6642:en 6661:nl 6733:en
    6794:en 6811:en 6860:en 6889:en 6905:en 6968:en 6974:en 6975:en 6979:en 7017:en 7040:en 7055:en 7100:en 7115:en
    7140:? 7152:en 7158:en 7192:en 7240:ru 7410:? 7461:en 7550:en 7556:en 7582:en 7586:en 7671:en 7698:en 7703:da
    7753:en 7769:en 7944:en 7973:en 7992:en 8008:en 8159:en 8168:en 8170:fr 8194:en 8295:en 8320:en 8351:en 8364:en
    8512:en 8554:en 8595:en 8636:en 8651:en 8667:en 8716:en 8728:en 8759:? 8773:en 8807:en 8814:en 8824:en 8873:en
    8909:en 8998:en 9019:? 9036:en 9202:en 9207:? 9240:en 9317:en 9331:? 9381:en 9386:en 9412:en 9430:? 9463:en
    9611:en 9654:en 9686:en 9712:en 9758:en 9897:fr 9910:en 9912:en 9968:en
""",
    "ENGLISH": """
    0:en 56:en 57:en 132:en 217:en 290:en 346:en 520:en 530:en 537:en 741:en 781:en 822:en 847:en 861:en 913:en
    1251:en 1286:en 1306:en 1311:en 1315:en 1492:en 1587:en 1862:en 2017:en 2032:en 2084:en 2103:en 2117:en 2135:en
    2212:en 2223:en 2417:en 3012:en 3122:en 3246:en 3323:en 3468:en 3686:en 3765:en 4036:en 4129:en 4166:en 4196:en
    4308:en 4385:en 4561:en 4578:en 4610:en 4627:en 4798:en 4832:en 4996:en 5067:en 5201:en 5280:en 5321:en 5334:en
    5492:en 5628:en 5645:en 5676:? 6025:fr 6132:en 6242:en 6280:en 6436:en 6524:en 6606:en 6680:en 6930:en 7010:?
    7113:en 7243:en 7317:en 7325:en 7350:en 7357:en 7398:en 7409:en 7412:en 7435:en 7541:en 7739:en 7761:en 7802:en
    7914:en 8174:en 8231:en 8500:en 8589:en 8983:en 9068:en 9103:en 9169:en 9301:en 9482:en 9523:en 9950:en 9969:en
""",
}
STRATUM_ROWS = {"NOT_ENGLISH": 3058, "ENGLISH": 6942}  # the strata's sizes the sample was drawn from


def hand_labels() -> dict[str, dict[int, str]]:
    """stratum -> {row: label} of HAND_LABELS."""
    return {stratum: {int(row): label for row, label in (item.split(":") for item in text.split())}
            for stratum, text in HAND_LABELS.items()}

"""tailor's pipelines: core/ (the plumbing every verb shares), verbs/ (one module per verb), browse/ (the local
page), demo/ (the demo world), and the data they ship: configs/, recipes/, sql/, concepts/, metadata/, models/."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # where the shipped data folders are

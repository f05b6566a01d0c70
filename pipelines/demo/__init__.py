"""The demo world: the generated web (web), the scoring of a demo run against its ground truth (score)
and the trainers of the shipped demo models (train_clip, train_captioner)."""

"""Shouts a word with the fixture package its lock installs."""

import cbs_fixture_words
from cbs_cell import Context


def handle(payload: dict, ctx: Context) -> dict:
    return {"shout": cbs_fixture_words.shout(payload["word"]), "version": "0.1.0"}

"""text.headline: a sentence as a headline (a capitalised first word, and
the runtime that wrote it). Served as a sidecar process."""

from cbs_cell import Context, InvalidInput


def handle(payload: dict, ctx: Context) -> dict:
    text = payload["text"].strip()
    if not text:
        raise InvalidInput("text is blank")
    return {"headline": f"{text[0].upper()}{text[1:]} (headline by a sidecar process)"}

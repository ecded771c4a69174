"""How text becomes ids and ids become text, and logits become the next id.

    schema.py         the seed schema's numeric fields: bounds, defaults, help, checks
    inputs.py         run()'s inputs -> a validated Request
    chat_template.py  a checkpoint's jinja chat template, compiled in a sandbox
    tokenizer.py      tokenizer.json: text <-> ids, messages -> prompt ids
    detokenizer.py    StreamDecoder: ids -> text chunks, never a broken character
    sampling.py       logits -> penalties -> temperature -> top-k -> top-p -> a seeded draw
    generate.py       prefill, then decode token by token until a stop
"""

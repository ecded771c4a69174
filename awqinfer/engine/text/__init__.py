"""How text becomes ids and ids become text, and logits become the next id.

    schema.py         the seed schema's numeric fields: bounds, defaults, help, checks
    inputs.py         run()'s inputs -> a validated Request
    chat_template.py  a checkpoint's jinja chat template, compiled in a sandbox
    tokenizer.py      tokenizer.json: text <-> ids, messages -> prompt ids
    detokenizer.py    StreamDecoder: ids -> text chunks, never a broken character
    sampling.py       logits -> penalties -> temperature -> top-k -> top-p -> a seeded draw
    constraints.py    grammars (llguidance): the tokens a JSON Schema or tool grammar forbids masked before the draw
    tools.py          tools/functions -> the prompt's description of them and the grammar of valid calls
    tool_stream.py    generated text -> the answer and tool calls, streamed in pieces
    generate.py       prefill, then decode token by token until a stop
"""

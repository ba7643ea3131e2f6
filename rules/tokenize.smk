# Tokenize: JSONL -> Megatron .bin/.idx, one indexed dataset per source.


rule tokenize:
    input:
        corpus=PATHS.corpus("{source}"),
        origins=PATHS.corpus_origins("{source}"),  # bad lines are named in the user's files
        tokenizer=PATHS.tokenizer_model,
    output:
        multiext(PATHS.tokenized_prefix("{source}"), ".bin", ".idx"),
    params:
        prefix=f"{PATHS.root}/tokenized/{{source}}",
        json_keys=" ".join(config["tokenize"]["json_keys"]),
        append_eod="--append-eod" if config["tokenize"]["append_eod"] else "",
        on_bad_line=config["tokenize"]["on_bad_line"],
        tokenizer_type=config["tokenizer"]["type"],
    log:
        log_path("tokenize/{source}"),
    threads: config["tokenize"]["workers"]
    resources:
        **rule_resources("tokenize"),
    shell:
        "kotomamba preprocess --input {input.corpus} --output-prefix {params.prefix}"
        " --tokenizer-type {params.tokenizer_type} --tokenizer-model {input.tokenizer}"
        " --json-keys {params.json_keys} {params.append_eod} --workers {threads}"
        " --on-bad-line {params.on_bad_line} > {log} 2>&1"

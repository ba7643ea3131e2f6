# Tokenizer: a SentencePiece model trained on the corpus's shards (skipped when config names an existing one).
# It reads the keys that are tokenized and leaves out the bad lines that tokenization leaves out.

if not config["tokenizer"]["model"]:

    TOKENIZER_SHARDS = [shard for source in (config["tokenizer"].get("train_sources") or SOURCES)
                        for shard in PATHS.shards(source)]

    rule tokenizer:
        input:
            # Every shard, read compressed as a stream, as the shard jobs read them.
            [PATHS.shard_file(shard) for shard in TOKENIZER_SHARDS],
        output:
            PATHS.tokenizer_model,
        params:
            out_dir=PATHS.tokenizer_dir,
            vocab_size=config["tokenizer"]["vocab_size"],
            model_type=config["tokenizer"]["model_type"],
            seed=config["seed"],
            json_keys=" ".join(map(shlex.quote, config["tokenize"]["json_keys"])),
            on_bad_line=config["tokenize"]["on_bad_line"],
            # Errors name the user's URL or file and its line, as the shard jobs' do.
            names=" ".join(shlex.quote(shard.location) for shard in TOKENIZER_SHARDS),
            # A local source file replaced by one with an older change time still retrains.
            state=[shard_state(shard) for shard in TOKENIZER_SHARDS],
        log:
            log_path("tokenizer"),
        threads: 2
        resources:
            **rule_resources("tokenizer"),
        shell:
            "kotomamba train-tokenizer --jsonl --input {input:q} --input-names {params.names}"
            " --json-keys {params.json_keys} --on-bad-line {params.on_bad_line}"
            " --vocab-size {params.vocab_size} --model-type {params.model_type} --seed {params.seed}"
            " --output {params.out_dir} > {log} 2>&1"

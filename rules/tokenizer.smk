# Tokenizer: a SentencePiece model trained on the corpus's shards (skipped when config names an existing one).

if not config["tokenizer"]["model"]:

    rule tokenizer:
        input:
            # Every shard, read compressed as a stream, as the shard jobs read them.
            [PATHS.corpus_files(s) for s in (config["tokenizer"].get("train_sources") or SOURCES)],
        output:
            PATHS.tokenizer_model,
        params:
            out_dir=PATHS.tokenizer_dir,
            vocab_size=config["tokenizer"]["vocab_size"],
            model_type=config["tokenizer"]["model_type"],
            seed=config["seed"],
            # A local source file replaced by one with an older change time still retrains.
            state=[shard_state(shard) for s in (config["tokenizer"].get("train_sources") or SOURCES)
                   for shard in PATHS.shards(s)],
        log:
            log_path("tokenizer"),
        threads: 2
        resources:
            **rule_resources("tokenizer"),
        shell:
            "kotomamba train-tokenizer --jsonl --input {input} --vocab-size {params.vocab_size}"
            " --model-type {params.model_type} --seed {params.seed}"
            " --output {params.out_dir} > {log} 2>&1"

# Evaluation: held-out perplexity of the trained and of an untrained model, generated samples, lm-eval tasks.


rule evaluate:
    input:
        model=PATHS.export_dir("mamba_ssm"),
        tokenizer=PATHS.tokenizer_model,
        data=tokenized_files(SOURCES),
    output:
        report(PATHS.eval_json, category="Evaluation", caption="../workflow_scripts/eval_caption.rst"),
    params:
        data_path=shlex.quote(data_path(config, SOURCES)),
        split=config["data"]["split"],
        seed=config["seed"],
        tasks=",".join(config["evaluate"]["lm_eval_tasks"]),
        prompts=quoted(config["evaluate"]["prompts"], "--prompt"),
        ev=config["evaluate"],
        tokenizer_type=config["tokenizer"]["type"],
        reset="" if config["data"]["reset_at_eod"] else "--no-reset-at-eod",
    log:
        log_path("evaluate"),
    resources:
        **rule_resources("evaluate"),
    shell:
        "kotomamba evaluate --model {input.model} --tokenizer-type {params.tokenizer_type}"
        " --tokenizer-model {input.tokenizer} --data {params.data_path} --split {params.split} {params.reset}"
        " --seq-length {params.ev[seq_length]} --eval-samples {params.ev[eval_samples]}"
        " --micro-batch-size {params.ev[micro_batch_size]} --seed {params.seed} --baseline-init"
        " {params.prompts} --max-new-tokens {params.ev[max_new_tokens]}"
        " --temperature {params.ev[temperature]} --top-k {params.ev[top_k]} --top-p {params.ev[top_p]}"
        " --lm-eval-tasks '{params.tasks}' --output {output} > {log} 2>&1"

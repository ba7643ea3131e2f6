# Evaluation: held-out perplexity of the trained and of an untrained model, generated samples, lm-eval tasks.


rule evaluate:
    input:
        model=PATHS.export_dir("hf"),
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
    log:
        log_path("evaluate"),
    resources:
        **rule_resources("evaluate"),
    shell:
        "kotomamba evaluate --model {input.model} --data {params.data_path} --split {params.split}"
        " --seq-length {params.ev[seq_length]} --eval-samples {params.ev[eval_samples]}"
        " --micro-batch-size {params.ev[micro_batch_size]} --seed {params.seed} --baseline-init"
        " {params.prompts} --max-new-tokens {params.ev[max_new_tokens]}"
        " --temperature {params.ev[temperature]} --top-k {params.ev[top_k]} --top-p {params.ev[top_p]}"
        " --lm-eval-tasks '{params.tasks}' --output {output} > {log} 2>&1"

"""Training config: YAML + dotted overrides, unknown keys and bad types name file, line and field."""
import pytest
import yaml

from kotomamba.errors import UserError
from kotomamba.train.config import accumulation_steps, dump_config, load_config

CONFIG = """\
run_dir: out/run
seed: 7
model:
  preset: tiny
  ssm_cfg: {layer: Mamba2}
init:
  from: null
train:
  micro_batch_size: 2
  global_batch_size: 8
  steps: 30
optim: {lr: 1.0e-3, min_lr: 1.0e-5, betas: [0.9, 0.95]}
schedule: {style: wsd, warmup_steps: 5}
checkpoint: {interval: 10, keep_last: 2, async: true}
"""


def write(tmp_path, text=CONFIG):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_load_and_override(tmp_path):
    config = load_config(write(tmp_path), ["train.steps=40", "optim.betas=[0.8, 0.9]", "init.from=prev/run",
                                           "logging.wandb.mode=offline"])
    assert config.seed == 7 and config.train.steps == 40 and config.optim.betas == [0.8, 0.9]
    assert config.init.from_ == "prev/run" and config.checkpoint.async_ is True
    assert config.logging.wandb.mode == "offline"
    assert config.model == {"preset": "tiny", "ssm_cfg": {"layer": "Mamba2"}}
    # defaults fill what the file leaves out
    assert config.data.seq_length == 128 and config.parallel.strategy == "FULL_SHARD"
    resolved = yaml.safe_load(dump_config(config))
    assert resolved["init"]["from"] == "prev/run" and resolved["checkpoint"]["async"] is True
    assert load_config(write(tmp_path, dump_config(config))) == config


def test_unknown_key_names_file_line_and_field(tmp_path):
    path = write(tmp_path, CONFIG.replace("  steps: 30", "  steps: 30\n  stepz: 3"))
    with pytest.raises(UserError, match=r"train\.yaml:12: unknown field 'train\.stepz'"):
        load_config(path)


def test_a_key_written_twice_is_refused_at_any_depth(tmp_path):
    """YAML keeps the last of two ``train:`` sections; the first one's steps would be silently dropped."""
    path = write(tmp_path, CONFIG + "train: {steps: 5}\n")
    first = next(i for i, l in enumerate(CONFIG.splitlines(), 1) if l.startswith("train:"))
    last = len(CONFIG.splitlines()) + 1
    with pytest.raises(UserError, match=rf"train.yaml:{last}: train: duplicate key \(first written at line {first}"):
        load_config(path)
    path = write(tmp_path, "model:\n  preset: tiny\n  d_model: 64\n  d_model: 128\n")
    with pytest.raises(UserError, match=r"train.yaml:4: model.d_model: duplicate key \(first written at line 3"):
        load_config(path)


@pytest.mark.parametrize("edit,field,message", [
    ("  d_modle: 64", "model.d_modle", "not a MambaConfig field"),
    ("  d_model: '64'", "model.d_model", "must be a positive integer, got '64'"),
    ("  ssm_cfg: {layer: Mamba2, headdim: 48}", "model.ssm_cfg.headdim", "expand * d_model = 128 is not a multiple"),
])
def test_a_bad_model_field_names_its_line(tmp_path, edit, field, message):
    path = write(tmp_path, CONFIG.replace("  ssm_cfg: {layer: Mamba2}", edit))
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:5: {field}: {message}"), info.value
    path = write(tmp_path, CONFIG.replace("preset: tiny", "preset: tinny"))
    with pytest.raises(UserError, match=r"train\.yaml:4: model\.preset: preset 'tinny' is unknown \(known: tiny, "):
        load_config(path)


def test_missing_inputs_name_the_config_line_and_field(tmp_path):
    from kotomamba.train.build import check_sources

    text = CONFIG + "data:\n  data_path: '1.0 nowhere/corpus'\n  tokenizer_model: nowhere/tok.model\n"
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=rf"^{path}:16: data\.data_path: nowhere/corpus\.idx: no such file$"):
        check_sources(load_config(path))
    corpus = tmp_path / "corpus"
    for suffix in (".idx", ".bin"):
        corpus.with_suffix(suffix).write_bytes(b"")
    path = write(tmp_path, text.replace("nowhere/corpus", str(corpus)))
    with pytest.raises(UserError, match=rf"^{path}:17: data\.tokenizer_model: nowhere/tok\.model: no such file$"):
        check_sources(load_config(path))


def test_bad_type_and_bad_choice(tmp_path):
    with pytest.raises(UserError, match=r"train\.yaml:11: field 'train\.steps' must be int"):
        load_config(write(tmp_path, CONFIG.replace("steps: 30", "steps: many")))
    with pytest.raises(UserError, match=r"override 'schedule\.style=exp'.*one of"):
        load_config(write(tmp_path), ["schedule.style=exp"])
    with pytest.raises(UserError, match="expected dotted.key=value"):
        load_config(write(tmp_path), ["train.steps"])


def test_the_global_batch_divides_over_every_process(tmp_path):
    """The one rule the trainer (actual world size) and the pipeline (configured nodes) both apply."""
    train = load_config(write(tmp_path)).train  # micro 2, global 8
    assert [accumulation_steps(train, world) for world in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(UserError, match=r"^global_batch_size 8 must be a multiple of micro_batch_size 2 x world size 3 = 6$"):
        accumulation_steps(train, 3)
    with pytest.raises(UserError, match=r"micro_batch_size 2 x launch.nodes 3 x launch.nproc_per_node 1 = 6$"):
        accumulation_steps(train, 3, "launch.nodes 3 x launch.nproc_per_node 1")


def test_cross_field_rules(tmp_path):
    with pytest.raises(UserError, match=r"global_batch_size 7 must be a multiple of micro_batch_size 2 x one process = 2$"):
        load_config(write(tmp_path), ["train.global_batch_size=7"])
    with pytest.raises(UserError, match="skip_ranges"):
        load_config(write(tmp_path), ["train.skip_ranges=[[5, 2]]"])
    with pytest.raises(UserError, match="1 <= start"):  # step numbers start at 1, as in metrics.jsonl
        load_config(write(tmp_path), ["train.skip_ranges=[[0, 2]]"])
    with pytest.raises(UserError, match="loss_scale.growth_interval"):
        load_config(write(tmp_path), ["loss_scale.growth_interval=0"])
    with pytest.raises(UserError, match="warmup_steps"):
        load_config(write(tmp_path), ["schedule.warmup_steps=31"])
    with pytest.raises(UserError, match="min_lr"):
        load_config(write(tmp_path), ["optim.min_lr=0.1"])


@pytest.mark.parametrize("clash, shown", [("parallel.compile=true", "parallel.compile: true"),
                                          ("parallel.activation_checkpointing=true",
                                           "parallel.activation_checkpointing: true"),
                                          ("precision=fp16", "precision: fp16")])
def test_cuda_graph_with_what_it_cannot_capture_is_refused(tmp_path, clash, shown):
    with pytest.raises(UserError, match=f"field 'parallel.cuda_graph' cannot be true with {shown}"):
        load_config(write(tmp_path), ["parallel.cuda_graph=true", clash])
    assert load_config(write(tmp_path), ["parallel.cuda_graph=true"]).parallel.cuda_graph is True


def test_document_resets_need_a_model_that_can_reset(tmp_path):
    """Mamba-1's layers take no seq_idx: data.reset_at_eod (true by default) is refused for a Mamba-1 model
    when the config is read, not at the first step."""
    mamba1 = write(tmp_path, CONFIG.replace("ssm_cfg: {layer: Mamba2}", "ssm_cfg: {layer: Mamba1}")
                   + "data: {reset_at_eod: true}\n")
    with pytest.raises(UserError, match=r"train\.yaml:15: field 'data\.reset_at_eod' cannot be true for a Mamba1 "
                                        r"model \(the model section\).*set data\.reset_at_eod: false"):
        load_config(mamba1)
    with pytest.raises(UserError, match="cannot be true for a Mamba1 model"):  # the default, with a Mamba-1 preset
        load_config(write(tmp_path), ["model.preset=mamba-130m", "model.ssm_cfg={}"])
    assert load_config(mamba1, ["data.reset_at_eod=false"]).data.reset_at_eod is False
    # A model to start from is read at start-up (test_train_init_from.py), not here.
    assert load_config(mamba1, ["init.from=prev/run"]).init.from_ == "prev/run"


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path):
    # PyYAML's own text spans four lines and names the file twice more.
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  tokenizer_model: [data/tok\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: not valid YAML: line 3, column 1: while parsing a flow sequence: ")
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError) as caught:
        load_config(None, ["train.steps=[1"])
    assert "value is not valid YAML: line 1, column 3: " in str(caught.value) and "\n" not in str(caught.value)

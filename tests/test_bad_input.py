"""Bad input at the public boundary: every case gets an exception of the documented type whose
message names the problem *and* the fix, nothing is attached to the model afterwards, and
nothing is written. The checks run as a user sees them (shape checks off)."""

from __future__ import annotations

import contextlib
import json
import re
import warnings

import pandas as pd
import pytest
import torch
from conftest import random_model_with_bundled_tokenizer, random_standard_sae
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

import saetools
from saetools import cli, widgets
from saetools.circuits import ablation, patching
from saetools.hooks import HookNameError, attached_hook_count, check_heads, check_hook_names
from saetools.splicing import SAEShapeError, ablate_latents, patch_latents, steer_latents
from saetools.tasks import ioi
from saetools.widgets.makelov import OverSplittingExplorer

pytestmark = pytest.mark.usefixtures("user_view")

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    return random_model_with_bundled_tokenizer()


@pytest.fixture(scope="module")
def sae():
    return random_standard_sae(d_in=32, hook=HOOK)


@pytest.fixture(scope="module")
def batch(model):
    return ioi.render(model, ioi.wang_spec(8, seed=0))


@contextlib.contextmanager
def raises(exc, *patterns):
    """``pytest.raises(exc)`` that also requires every regex in ``patterns`` in the message
    (the problem and the fix)."""
    with pytest.raises(exc) as info:
        yield info
    for p in patterns:
        assert re.search(p, str(info.value)), f"{p!r} not in message: {info.value}"


# -- loading ---------------------------------------------------------------------------------


def test_unknown_model_name():
    with raises(ValueError, "unknown model 'gpt-3'", "tiny-ioi", "save_model"):
        saetools.load_model("gpt-3")


@pytest.mark.parametrize("dtype", ["float8", "int32", torch.int64])
def test_unsupported_dtype(dtype):
    with raises(ValueError, "unsupported dtype", "float16", "bfloat16"):
        saetools.load_model("tiny-ioi", dtype=dtype)


def test_dtype_by_name_works():
    m = saetools.load_model("tiny-ioi", dtype="float64", device="cpu")
    assert m.W_E.dtype == torch.float64


def test_invalid_device():
    with raises(ValueError, "invalid device 'gpu:x'", "'cpu'"):
        saetools.load_model("tiny-ioi", device="gpu:x")


def test_model_folder_without_files(tmp_path):
    with raises(FileNotFoundError, "missing", "rebuild|reinstall"):
        saetools.load_model(str(tmp_path))


# -- hooks -----------------------------------------------------------------------------------


def test_misspelled_hook_names_the_nearest(model):
    with raises(HookNameError, "blocks.0.hook_resid_prex", "blocks.0.hook_resid_pre"):
        check_hook_names(model, ["blocks.0.hook_resid_prex"])


@pytest.mark.parametrize("heads", [[(2, 0)], [(0, 4)], [(-1, 0)]])
def test_heads_out_of_range(model, heads):
    with raises(ValueError, "do not exist", "2 layers x 4 heads", "start at 0"):
        check_heads(model, heads)


# -- splicing --------------------------------------------------------------------------------


def _splice_fails(model, saes, exc, *patterns, **kw):
    before = attached_hook_count(model), dict(model._acts_to_saes)
    with raises(exc, *patterns), saetools.splice(model, saes, **kw):
        pass
    assert (attached_hook_count(model), dict(model._acts_to_saes)) == before


def test_splice_into_a_plain_hooked_transformer(sae):
    plain = HookedTransformer(random_model_with_bundled_tokenizer().cfg)
    with raises(TypeError, "HookedSAETransformer", "load_model"), saetools.splice(plain, sae):
        pass


def test_splice_a_string(model):
    _splice_fails(model, "resid2-topk16", TypeError, "sae-lens SAEs", "load_bundled_sae")


def test_two_saes_on_one_hook(model, sae):
    other = random_standard_sae(d_in=32, hook=HOOK, seed=1, d_sae=16)
    _splice_fails(model, [sae, other], ValueError, "same hook", "one after another")


def test_sae_of_the_wrong_width(model):
    wide = random_standard_sae(d_in=48, hook=HOOK)
    _splice_fails(model, wide, SAEShapeError, "d_in=48", "width 32", "another model or hook")


def test_sae_on_a_hook_the_model_lacks(model):
    far = random_standard_sae(d_in=32, hook="blocks.7.hook_resid_pre")
    _splice_fails(model, far, HookNameError, "blocks.7.hook_resid_pre", "nearest|did you mean|valid")


def test_sae_without_a_hook_name(model):
    anon = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    _splice_fails(model, anon, ValueError, "hook_name", "set it")


def test_hook_z_sae_that_does_not_reshape(model):
    z = StandardSAE(
        StandardSAEConfig(d_in=32, d_sae=16, metadata=SAEMetadata(hook_name="blocks.0.attn.hook_z"))
    )
    _splice_fails(model, z, SAEShapeError, "does not reshape", "reshape_activations='hook_z'")


def test_error_grad_without_error_term(model, sae):
    _splice_fails(model, sae, ValueError, "error_grad=True needs use_error_term=True", error_grad=True)


def test_sae_from_another_model_warns(model):
    other = random_standard_sae(d_in=32, hook=HOOK)
    other.cfg.metadata.model_name = "pythia-70m"
    with pytest.warns(UserWarning, match="trained on 'pythia-70m'"), saetools.splice(model, other):
        pass


def test_gpt2_aliases_are_one_model(model):
    other = random_standard_sae(d_in=32, hook=HOOK)
    other.cfg.metadata.model_name, model.cfg.model_name = "gpt2-small", "gpt2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with saetools.splice(model, other):
            pass


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: ablate_latents([999]), "latent indices \\[999\\] are out of range"),
        (lambda: steer_latents([64], 1.0), "latent indices \\[64\\] are out of range"),
        (lambda: ablate_latents([0], positions=[99]), "position indices \\[99\\] are out of range"),
        (lambda: patch_latents(torch.zeros(1, 1, 8)), "source has d_sae=8"),
    ],
)
def test_interventions_out_of_range(model, sae, batch, make, pattern):
    before = attached_hook_count(model)
    with raises(ValueError, pattern), saetools.splice(model, sae, interventions=[(sae, make())]):
        model(batch.tokens)
    assert attached_hook_count(model) == before and not model._acts_to_saes


# -- SAE files -------------------------------------------------------------------------------


def _saved(sae, path):
    from saetools.saes import save_sae

    return save_sae(sae, path)


def test_load_from_a_folder_without_cfg(tmp_path):
    from saetools.saes import load_sae

    with raises(FileNotFoundError, "no cfg.json", "save_sae"):
        load_sae(tmp_path)


def test_cfg_that_is_not_json(tmp_path, sae):
    from saetools.saes import load_sae

    path = _saved(sae, tmp_path / "sae")
    (path / "cfg.json").write_text("{not json")
    with raises(ValueError, "cfg.json is not valid JSON", "re-save"):
        load_sae(path)


def test_cfg_missing_a_field(tmp_path, sae):
    from saetools.saes import load_sae

    path = _saved(sae, tmp_path / "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    del cfg["d_sae"]
    (path / "cfg.json").write_text(json.dumps(cfg))
    with raises(ValueError, "lacks the fields \\['d_sae'\\]", "re-save"):
        load_sae(path)


def test_truncated_weights(tmp_path, sae):
    from saetools.saes import load_sae

    path = _saved(sae, tmp_path / "sae")
    w = path / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with raises(ValueError, "sae_weights.safetensors is damaged or truncated", "re-save"):
        load_sae(path)


def test_missing_weights(tmp_path, sae):
    from saetools.saes import load_sae

    path = _saved(sae, tmp_path / "sae")
    (path / "sae_weights.safetensors").unlink()
    with raises(FileNotFoundError, "missing", "re-save"):
        load_sae(path)


def test_save_something_that_is_not_an_sae(tmp_path):
    from saetools.saes import save_sae

    with raises(TypeError, "needs a sae-lens SAE", "dict"):
        save_sae({"W_dec": 1}, tmp_path / "x")


def test_save_under_a_file(tmp_path, sae):
    (tmp_path / "f").write_text("")
    with raises(NotADirectoryError, "cannot write", "folder"):
        _saved(sae, tmp_path / "f" / "sae")


def test_unknown_bundled_sae():
    with raises(ValueError, "nope", "resid2-topk16"):
        saetools.load_bundled_sae("nope")


@pytest.mark.parametrize(
    "release, sae_id, pattern",
    [
        ("gpt2-small-res-jbx", "blocks.8.hook_resid_pre", "unknown sae-lens release"),
        ("gpt2-small-res-jb", "blocks.80.hook_resid_pre", "has no SAE"),
    ],
)
def test_unknown_pretrained_sae(release, sae_id, pattern):
    from saetools.saes import load_pretrained_sae

    with raises(ValueError, pattern, "nearest"):
        load_pretrained_sae(release, sae_id)


# -- IOI prompts -----------------------------------------------------------------------------


def test_render_no_prompts(model):
    with raises(ValueError, "no prompts", "wang_spec"):
        ioi.render(model, ioi.wang_spec(0, seed=0))


def test_render_a_table_that_is_not_a_spec(model):
    with raises(ValueError, "lacks the columns", "sample_spec"):
        ioi.render(model, pd.DataFrame({"io": ["Mary"]}))


@pytest.mark.parametrize(
    "column, word, kind",
    [
        ("io", "Maximiliana", "name"),
        ("place", "supermarketplace", "place"),
        ("object", "chrysanthemum", "object"),
    ],
)
def test_render_multi_token_words(model, column, word, kind):
    spec = ioi.wang_spec(4, seed=0)
    spec.loc[0, column] = word
    with raises(ioi.MultiTokenWordError, f"{kind}s are not single tokens", word, "single_token_words"):
        ioi.render(model, spec)


def test_render_without_tokenizer():
    from conftest import build_model, tiny_random_config

    bare = build_model(tiny_random_config())
    with raises(ValueError, "no tokenizer", "load_model"):
        ioi.render(bare, ioi.wang_spec(2, seed=0))


@pytest.mark.parametrize(
    "template, pattern",
    [
        ("Then, {N1} and {N2} went to the {SHOP}. {S} gave a ring to", "unknown placeholders \\['SHOP'\\]"),
        ("Then, Mary and John went home. John gave a ring to", "missing \\['N1', 'N2', 'S'\\]"),
        ("Then, {N1} and {N2} talked. {S} said to {N1}", "ends with a placeholder"),
        ("Then, {N1 and {N2}. {S} said to", "not a valid format string"),
    ],
)
def test_bad_templates(template, pattern):
    with raises(ValueError, pattern):
        ioi.sample_spec(4, templates=[template], names=["Mary", "John", "Anna"], seed=0)


def test_too_few_names():
    with raises(ValueError, "at least 3 distinct names", "IO, S"):
        ioi.wang_spec(4, seed=0, names=["Mary", "John"])


def test_negative_prompt_count():
    with raises(ValueError, "n must be >= 0"):
        ioi.wang_spec(-1, seed=0)


def test_unknown_counterfactual_attribute():
    with raises(ValueError, "place|attribute", "io|s|pos"):
        ioi.counterfactual(ioi.wang_spec(4, seed=0), "place", seed=0)


def test_unknown_word_list():
    from saetools.data import load_words

    with raises(ValueError, "animals", "names"):
        load_words("animals")


# -- activations and training ----------------------------------------------------------------

META = SAEMetadata(hook_name=HOOK)


def _cfg(d_in=32):
    from sae_lens import TopKTrainingSAEConfig

    return TopKTrainingSAEConfig(d_in=d_in, d_sae=32, k=4, metadata=META)


def test_checkpoint_dir_under_a_file_fails_before_training(tmp_path):
    (tmp_path / "f").write_text("")
    with raises(NotADirectoryError, "cannot write checkpoints", "folder you can write"):
        saetools.train_sae(
            torch.randn(256, 32),
            _cfg(),
            total_samples=10**9,
            n_checkpoints=2,
            checkpoint_dir=tmp_path / "f" / "ckpt",
        )


def test_checkpoints_without_a_folder():
    with raises(ValueError, "n_checkpoints=2 needs checkpoint_dir"):
        saetools.train_sae(torch.randn(256, 32), _cfg(), total_samples=512, n_checkpoints=2)


def test_activations_of_the_wrong_width():
    with raises(ValueError, "d_in=32", "width 16"):
        saetools.train_sae(torch.randn(256, 16), _cfg(), total_samples=512)


def test_activations_with_nan():
    acts = torch.randn(256, 32)
    acts[3, 4] = float("nan")
    with raises(ValueError, "NaN|inf|finite"):
        saetools.train_sae(acts, _cfg(), total_samples=512)


def test_resume_from_a_run_interrupted_before_its_first_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with raises(FileNotFoundError, "interrupted before its first checkpoint", "without resume_from"):
        saetools.train_sae(torch.randn(256, 32), _cfg(), total_samples=512, resume_from=tmp_path / "ckpt")


def test_resume_from_a_folder_that_does_not_exist(tmp_path):
    with raises(FileNotFoundError, "does not exist", "checkpoint_dir of the interrupted run"):
        saetools.train_sae(torch.randn(256, 32), _cfg(), total_samples=512, resume_from=tmp_path / "nope")


def test_resume_from_a_damaged_stream_state(tmp_path):
    from saetools.training import STATE_FILE

    ck = tmp_path / "ckpt" / "step_1"
    ck.mkdir(parents=True)
    (ck / STATE_FILE).write_text('{"seed": 0, "batch_si')
    with raises(ValueError, "is damaged", "delete that folder|start again"):
        saetools.train_sae(torch.randn(256, 32), _cfg(), total_samples=512, resume_from=tmp_path / "ckpt")


def test_store_folder_that_does_not_exist(tmp_path):
    with raises(FileNotFoundError, "store.json not found", "from_model"):
        saetools.ActivationStore.open(tmp_path / "nope")


def test_store_from_a_vector():
    with raises(ValueError, "acts must be \\[n, d_in\\]"):
        saetools.ActivationStore.in_memory(torch.randn(10))


def test_store_under_a_file_fails_before_collecting(model, batch, tmp_path):
    (tmp_path / "f").write_text("")
    with raises(NotADirectoryError, "cannot write"):
        saetools.ActivationStore.from_model(model, batch.tokens, HOOK, path=tmp_path / "f" / "store")


def test_collect_from_a_misspelled_hook(model, batch):
    with raises(HookNameError, "blocks.1.hook_resid_pree", "blocks.1.hook_resid_pre"):
        saetools.collect_activations(model, batch.tokens, "blocks.1.hook_resid_pree")


# -- evaluation ------------------------------------------------------------------------------


def test_evaluate_an_sae_of_the_wrong_width(model, batch):
    with raises(SAEShapeError, "d_in=48", "another model or hook"):
        saetools.evaluate_saes(model, random_standard_sae(d_in=48, hook=HOOK), batch.tokens)


def test_evaluate_on_no_prompts(model, sae):
    with raises(ValueError, "tokens must be \\[batch >= 1, pos >= 2\\]", "ioi.render"):
        saetools.evaluate_saes(model, sae, torch.zeros(0, 8, dtype=torch.long))


def test_evaluate_no_saes(model, batch):
    with raises(ValueError, "at least one SAE"):
        saetools.evaluate_saes(model, [], batch.tokens)


def test_evaluate_with_batch_size_zero(model, sae, batch):
    with raises(ValueError, "batch_size must be >= 1"):
        saetools.evaluate_saes(model, sae, batch.tokens, batch_size=0)


# -- ablation and patching -------------------------------------------------------------------


def test_misspelled_ablation_method(model, batch):
    with raises(ValueError, "'meen'", "'zero', 'mean' or 'resample'"):
        ablation.head_z_replacements(model, batch, method="meen")


def test_mean_ablation_without_a_reference(model, batch):
    with raises(ValueError, "needs a reference batch", "ABC"):
        ablation.head_z_replacements(model, batch, method="mean")


def test_ablate_a_head_that_does_not_exist(model, batch):
    reps = ablation.head_z_replacements(model, batch, method="zero")
    with raises(ValueError, "\\(5, 0\\)", "do not exist"):
        ablation.head_ablated_logit_diff(model, batch, [(5, 0)], replacements=reps)


def test_replacements_for_too_few_layers(model, batch):
    with raises(ValueError, "no replacement values for layers \\[1\\]", "head_z_replacements"):
        ablation.head_ablation_hooks([(1, 0)], {0: torch.zeros(1, 1, 4, 8)})


def test_patch_an_unknown_component(model, batch):
    with raises(ValueError, "component"):
        patching.patch_heads(model, batch, component="o")


# -- LM-Infinite, experiments, widgets -------------------------------------------------------


def test_lm_infinite_config():
    from saetools.lminfinite import LMInfiniteConfig

    with raises(ValueError, "LMInfiniteConfig"):
        LMInfiniteConfig(n_local=0)


def test_lm_infinite_reproduction_on_an_absolute_position_model(model):
    from saetools.experiments import han2023_lm_infinite as exp

    with raises(ValueError, "needs a model with rotary position embeddings", "tiny-rotary"):
        exp.run(model, exp.Config())


def test_unknown_profile():
    from saetools.experiments import wang2022_ioi

    with raises(ValueError, "unknown profile 'tiny'", "full", "smoke"):
        wang2022_ioi.Config.profile("tiny")


@pytest.mark.parametrize(
    "call, exc, patterns",
    [
        (
            lambda: widgets.dashboard_html({}),
            ValueError,
            ("no latent data", "gather_latent_data"),
        ),
        (
            lambda: widgets.latent_browser({}),
            ValueError,
            ("no latent data", "gather_latent_data"),
        ),
        (
            lambda: widgets.heatmap(pd.DataFrame(), index="a", columns="b", values="c", title="t"),
            ValueError,
            ("non-empty DataFrame",),
        ),
        (
            lambda: widgets.heatmap(pd.DataFrame({"a": [1]}), index="a", columns="b", values="c", title="t"),
            ValueError,
            ("no columns \\['b', 'c'\\]",),
        ),
        (
            lambda: widgets.table_html([1, 2]),
            TypeError,
            ("DataFrame",),
        ),
        (
            lambda: widgets.attention_heads_html(["a", "b"], torch.ones(1, 3, 3)),
            ValueError,
            ("pattern must be \\[head, 2, 2\\]",),
        ),
        (
            lambda: OverSplittingExplorer({}),
            ValueError,
            ("results is empty", "over_splitting"),
        ),
    ],
)
def test_widgets_refuse_empty_or_wrong_data(call, exc, patterns):
    with raises(exc, *patterns):
        call()


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, patterns",
    [
        (["--model", "gpt-3"], ("unknown model 'gpt-3'", "tiny-ioi")),
        (["--only", "zzz"], ("no notebook name contains", "00_quickstart")),
    ],
)
def test_reproduce_refuses_before_starting_a_kernel(tmp_path, capsys, args, patterns):
    import time

    t0 = time.perf_counter()
    assert cli.main(["reproduce", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    for p in patterns:
        assert p in err, err
    assert "Traceback" not in err and time.perf_counter() - t0 < 5 and not (tmp_path / "out").exists()


def test_reproduce_with_an_empty_notebook_folder(tmp_path, capsys):
    (tmp_path / "nb").mkdir()
    assert cli.main(["reproduce", "--notebooks", str(tmp_path / "nb"), "--out", str(tmp_path / "out")]) == 2
    assert "no notebooks (*.ipynb)" in capsys.readouterr().err


def test_reproduce_into_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert cli.main(["reproduce", "--only", "00", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the report" in err and "is a file" in err


def test_reproduce_with_an_unknown_profile(tmp_path):
    from saetools.reproduce import reproduce

    with raises(ValueError, "unknown profile 'medium'", "smoke"):
        reproduce(model="tiny-ioi", profile="medium", out_dir=tmp_path)

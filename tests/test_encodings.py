"""The baseline arms: xVal, RT place-value tokens (+NTL), regression head -- their text handling,
their models, and their training through the same `ntl.lab.train.train_arm` as the token arms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ntl.lab.encodings import ENCODING_ARMS, is_encoding_arm, parse_encoding_arm
from ntl.lab.encodings import rt as RT
from ntl.lab.encodings import xval as XV
from ntl.lab.encodings.common import format_value, mask_numbers, signed_log
from ntl.lab.metrics import parse_number

RECORDS = [
    {"module": "add", "question": f"What is {a} + {b}?", "answer": str(round(a + b, 2)), "split": "train"}
    for a in (-4, -1, 0, 2, 5, 7)
    for b in (1, 2.5, -3, 0.25)
]
NUMBERS = ["54", "13.87", "-0.4", "0", "-1224.04", "100", "7", "-3", "0.00025", "3.50",
           "12345678901234567890"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two fighting over shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(load_tok):
    """The token arms' recipe: t5-small made digit-level, restricted to the records' pieces."""
    from ntl.lab.data.collate import restrict_tokenizer
    from ntl.numbers import split_digits

    texts = [r[k] for r in RECORDS for k in ("question", "answer")]
    return restrict_tokenizer(split_digits(load_tok("t5-small")), texts)


@pytest.fixture(scope="module")
def xval_tok(tok):
    import copy

    return XV.add_num_token(copy.deepcopy(tok))


@pytest.fixture(scope="module")
def rt_tok(tok):
    import copy

    return RT.add_rt_tokens(copy.deepcopy(tok))


# ---------------------------------------------------------------------- arms and text
def test_arm_names():
    assert all(is_encoding_arm(a) for a in ENCODING_ARMS)
    a, b = parse_encoding_arm("rt+ntl"), parse_encoding_arm("rt+ntl-mse")
    assert (a.kind, a.ntl, a.lam) == (b.kind, b.ntl, b.lam) == ("rt", "mse", 0.3)
    assert parse_encoding_arm("rt+ntl-was@0.8").lam == 0.8
    assert parse_encoding_arm("rt").lam == 0.0
    assert parse_encoding_arm("xval-linear").scaling == "linear"
    for bad in ("ce", "ce+ntl-was", "rt+ntl-number-level", "xval2"):
        assert not is_encoding_arm(bad)


def test_mask_numbers_signs_and_subtraction():
    masked, nums = mask_numbers("Solve -57*p + 16*p = -41 for p. (-20)/4*-6 2-3 5 - 3.25")
    assert nums == ["-57", "16", "-41", "-20", "4", "-6", "2", "3", "5", "3.25"]
    assert masked == "Solve 0*p + 0*p = 0 for p. (0)/0*0 0-0 0 - 0"


def test_format_value_plain_decimals():
    for v in (3.5, -1e-7, 2758677479.0, 0.1, -0.0, 1e25, 123.456):
        text = format_value(v)
        assert "e" not in text.lower()
        assert parse_number(text) == pytest.approx(float(np.float32(v)), rel=1e-6, abs=0)
    assert parse_number(format_value(float("nan"))) is None


# ---------------------------------------------------------------------- RT
def test_rt_tokens_and_examples():
    assert len(RT.RT_TOKENS) == 320 and len(set(RT.RT_TOKENS)) == 320
    assert RT.number_to_tokens("54") == ["_5_1_", "_4_0_"]
    assert RT.number_to_tokens("13.87") == ["_1_1_", "_3_0_", "_8_-1_", "_7_-2_"]
    assert RT.number_to_tokens("-0.4") == ["-", "_0_0_", "_4_-1_"]


@pytest.mark.parametrize("text", NUMBERS)
def test_rt_round_trip(text):
    tokens = RT.number_to_tokens(text)
    assert RT.parse_rt(tokens) == float(text)
    assert RT.rt_to_text(["\u2581", *tokens]) == text  # exact digits, trailing zeros kept
    assert parse_number(RT.rt_to_text(tokens)) == float(text)


def test_rt_range():
    with pytest.raises(ValueError, match="decimals"):
        RT.number_to_tokens("0.0000000000001")  # 13 decimals
    assert RT.number_to_tokens("0.0000000000019", truncate=True)[-1] == "_1_-12_"
    with pytest.raises(ValueError, match="integer digits"):
        RT.number_to_tokens("1" * 21)


MALFORMED = {
    "rising": ["_5_0_", "_4_1_"],
    "repeated place": ["_5_0_", "_4_0_"],
    "duplicate token": ["_5_1_", "_5_1_"],
    "gap": ["_5_2_", "_4_0_"],
    "no units digit": ["_5_1_"],
    "fraction only": ["_5_-1_", "_2_-2_"],
    "gap in fraction": ["_1_0_", "_5_-2_"],
    "after text": ["x", "_5_0_"],
    "after a digit and point": ["3", ".", "_5_0_"],
    "followed by text": ["_5_0_", "kg"],
    "sign only": ["-"],
    "two numbers": ["_5_0_", "\u2581", "_3_0_"],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_rt_malformed_is_invalid(name):
    tokens = MALFORMED[name]
    assert RT.parse_rt(tokens) is None
    assert parse_number(RT.rt_to_text(tokens)) is None, RT.rt_to_text(tokens)


def test_rt_encode_texts(rt_tok):
    ids, truncated = RT.encode_texts(rt_tok, ["What is -5 + 13.87?", "-1224.04"])
    assert truncated == 0
    pieces = rt_tok.convert_ids_to_tokens(ids[0])
    assert pieces[pieces.index("-") :][:2] == ["-", "_5_0_"]
    assert ["_1_1_", "_3_0_", "_8_-1_", "_7_-2_"] == [p for p in pieces if RT.parse_token(p)][1:]
    assert not any(p.isdigit() for p in pieces)
    answer = rt_tok.convert_ids_to_tokens(ids[1])
    assert RT.parse_rt(answer) == -1224.04 and RT.rt_to_text(answer) == "-1224.04"


def test_rt_number_vocab_digit_values(rt_tok):
    from ntl.losses import functional as F

    vocab = RT.rt_number_vocab(rt_tok, vocab_size=len(rt_tok) + 3)
    assert vocab.num_number_tokens == 320 and set(vocab.number_tokens) == set(RT.RT_TOKENS)
    ids = rt_tok.convert_tokens_to_ids(["_5_1_", "_5_-3_", "_7_0_", "3"])
    assert vocab.values[ids[0]] == 5 and vocab.values[ids[1]] == 5 and vocab.values[ids[2]] == 7
    assert math.isnan(float(vocab.values[ids[3]]))  # plain digits are not number tokens here
    # all mass on a token with the right digit at another place: NTL is 0 (digit values)
    logits = torch.full((1, vocab.vocab_size), -30.0)
    logits[0, ids[1]] = 30.0
    labels = torch.tensor([ids[0]])
    for fn in (F.wasserstein, F.expectation):
        assert float(fn(logits, labels, vocab)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.full((1, vocab.vocab_size), -30.0)
    logits[0, ids[2]] = 30.0  # digit 7 for a target 5
    assert float(F.wasserstein(logits, labels, vocab)) == pytest.approx(2.0, abs=1e-4)
    assert float(F.expectation(logits, labels, vocab)) == pytest.approx(4.0, abs=1e-3)


def test_rt_numeric_encoding(rt_tok):
    enc = RT.numeric_encoding(rt_tok.get_vocab(), len(rt_tok), 32)
    ids = rt_tok.convert_tokens_to_ids(["_5_1_", "_5_0_", "_0_3_", "_6_1_", "What"])
    assert enc.shape == (len(rt_tok), 32) and enc.abs().max() <= 1.0 + 1e-6
    assert enc[ids[2]].abs().sum() == 0 and enc[ids[4]].abs().sum() == 0
    assert (enc[ids[0]] - enc[ids[3]]).norm() < (enc[ids[0]] - enc[ids[1]]).norm()  # 50~60, not 5


# ---------------------------------------------------------------------- xVal
def test_xval_encode_texts(xval_tok):
    ids, values = XV.encode_texts(xval_tok, ["What is -5 + 13.87?"])
    num = XV.num_id(xval_tok)
    assert ids[0].count(num) == 2
    assert [v for i, v in zip(ids[0], values[0]) if i == num] == [-5.0, 13.87]
    assert all(math.isnan(v) for i, v in zip(ids[0], values[0]) if i != num)


def _tiny_xval(xval_tok):
    from ntl.lab.models import model_vocab_size, special_token_ids, t5_config_kwargs

    ids = special_token_ids(xval_tok)
    config = XV.XValConfig(num_token_id=XV.num_id(xval_tok), **t5_config_kwargs(
        "t5-micro", model_vocab_size(xval_tok), pad=ids["pad"], eos=ids["eos"]))
    torch.manual_seed(0)
    return XV.XValT5(config)


@pytest.mark.parametrize("text", [t for t in NUMBERS if len(t) < 15])
def test_xval_round_trip_through_number_head(xval_tok, text):
    """Value -> [NUM] -> number head (set to output the value fed) -> generated text -> value,
    and the predicted value is what the decoder is fed at the next step."""
    model = _tiny_xval(xval_tok)
    ids, values = XV.encode_texts(xval_tok, [text])
    num = XV.num_id(xval_tok)
    (value,) = [v for i, v in zip(ids[0], values[0]) if i == num]
    target = model.scaling.forward(torch.tensor(value, dtype=torch.float64)).float()

    class Head(torch.nn.Module):  # outputs the scaled value that was fed in
        def forward(self, hidden):
            return target.expand(hidden.shape[:-1])

    model.number_head = Head()
    script = iter([num, model.eos_id, model.eos_id])

    def force(logits):  # the LM emits [NUM] then eos
        forced = torch.full_like(logits, -1e9)
        forced[:, next(script)] = 0.0
        return forced

    fed = []
    embed = model.embed
    model.embed = lambda i, v: fed.append((i.clone(), None if v is None else v.clone())) or embed(i, v)
    batch_ids = torch.tensor([ids[0] + [model.eos_id]])
    batch_vals = torch.tensor([values[0] + [math.nan]], dtype=torch.float64)
    out_ids, out_vals = model.generate_values(
        batch_ids, torch.ones_like(batch_ids), batch_vals, max_new_tokens=3, logits_filter=force
    )
    assert out_ids[0].tolist()[:2] == [num, model.eos_id]
    text_out = XV.decode_text(xval_tok, [num], [float(out_vals[0, 0])])
    assert "e" not in text_out
    assert parse_number(text_out) == pytest.approx(value, rel=1e-5, abs=1e-6)
    # step 2's decoder input is [NUM] with the predicted (scaled) value
    step2_ids, step2_vals = fed[2]
    assert step2_ids.tolist() == [[num]] and float(step2_vals[0, 0]) == pytest.approx(float(target))


def test_xval_fused_numbers_are_invalid(xval_tok):
    num = XV.num_id(xval_tok)
    five = xval_tok.convert_tokens_to_ids("5")
    assert parse_number(XV.decode_text(xval_tok, [num], [3.25])) == 3.25
    assert parse_number(XV.decode_text(xval_tok, [num, num], [3.2, 5.0])) is None
    assert parse_number(XV.decode_text(xval_tok, [num, five], [3.2, math.nan])) is None


def test_greedy_cache_matches_full_recompute(xval_tok):
    model = _tiny_xval(xval_tok)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ids, values = XV.encode_texts(xval_tok, ["What is 2 + 2.5?"])
    batch_ids = torch.tensor([ids[0] + [model.eos_id]] * 2)
    batch_vals = torch.tensor([values[0] + [math.nan]] * 2, dtype=torch.float64)
    batch_vals[1, 3] = -7.0 if not math.isnan(batch_vals[1, 3]) else batch_vals[1, 3]
    mask = torch.ones_like(batch_ids)
    a = model.generate_values(batch_ids, mask, batch_vals, max_new_tokens=6, use_cache=True)
    b = model.generate_values(batch_ids, mask, batch_vals, max_new_tokens=6, use_cache=False)
    assert torch.equal(a[0], b[0])
    assert torch.allclose(a[1], b[1], equal_nan=True, rtol=1e-4)


def test_xval_loss_parts(xval_tok, tmp_path):
    model = _tiny_xval(xval_tok)
    q_ids, q_vals = XV.encode_texts(xval_tok, ["What is 2 + 3?"])
    a_ids, a_vals = XV.encode_texts(xval_tok, ["5"])
    batch = dict(
        input_ids=torch.tensor(q_ids), attention_mask=torch.ones(1, len(q_ids[0]), dtype=torch.long),
        input_values=torch.tensor(q_vals, dtype=torch.float64),
        labels=torch.tensor(a_ids), label_values=torch.tensor(a_vals, dtype=torch.float64),
    )
    out = model(**batch)
    assert float(out.loss.detach()) == pytest.approx(float((out.ce + out.mse).detach()), rel=1e-6)
    T = len(a_ids[0])
    assert out.logits.shape == (1, T, model.config.vocab_size) and out.number_values.shape == (1, T)
    assert model.number_head(torch.zeros(3, 2, model.d_model)).shape == (3, 2)
    assert float(signed_log(torch.tensor(5.0))) == pytest.approx(math.log10(6))
    # saved and loaded as a Hugging Face model: same outputs; AutoModel refuses the folder
    model.save_pretrained(tmp_path)
    again = XV.XValT5.from_pretrained(tmp_path).eval()
    model.eval()
    assert torch.equal(model(**batch).logits, again(**batch).logits)
    from transformers import AutoModelForSeq2SeqLM

    with pytest.raises((ValueError, KeyError)):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


def test_rt_model_saves_its_numeric_encoding(rt_tok, tmp_path):
    from ntl.lab.models import model_vocab_size, special_token_ids, t5_config_kwargs

    ids = special_token_ids(rt_tok)
    token_ids = dict(zip(RT.RT_TOKENS, rt_tok.convert_tokens_to_ids(list(RT.RT_TOKENS))))
    model = RT.RTT5(RT.RTConfig(rt_token_ids=token_ids, **t5_config_kwargs(
        "t5-micro", model_vocab_size(rt_tok), pad=ids["pad"], eos=ids["eos"])))
    five = torch.tensor([[token_ids["_5_1_"]]])
    assert not torch.equal(model.embed(five, None), model.shared(five))  # the encoding is added
    model.save_pretrained(tmp_path)
    again = RT.RTT5.from_pretrained(tmp_path)
    assert torch.equal(again.numeric_encoding, model.numeric_encoding)
    batch = dict(input_ids=torch.tensor([[3, 4, 1]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                 labels=five)
    model.eval(), again.eval()
    assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert float(model(**batch).loss.detach()) > 0


# ---------------------------------------------------------------------- training
def _data(tmp_path) -> dict:
    data = {}
    for split, recs in (("train", RECORDS), ("valid", RECORDS[:6]), ("extrapolate", RECORDS[6:10])):
        data[split] = tmp_path / f"{split}.jsonl"
        data[split].write_text("".join(json.dumps({**r, "split": split}) + "\n" for r in recs))
    return data


@pytest.mark.parametrize("arm", ["xval", "rt", "rt+ntl", "regression-head"])
def test_arm_trains_and_evaluates_through_train_arm(arm, tmp_path):
    """The baselines train through ntl.lab.train.train_arm (the HF Trainer: checkpoints in
    safetensors, logs with the loss parts) and evaluate through ntl.lab.evaluate.evaluate_run."""
    from ntl.decoding import Decoding
    from ntl.lab.config import Profile
    from ntl.lab.evaluate import evaluate_run, is_evaluated
    from ntl.lab.train import is_trained, train_arm

    profile = Profile(model="t5-micro", max_steps=24, batch_size=8, lr=3e-3, warmup_steps=0,
                      logging_steps=4, save_steps=12, eval_splits=("valid", "extrapolate"),
                      n_boot=20, max_new_tokens=8, threads=1)
    run = tmp_path / "runs" / arm / "seed0"
    summary = train_arm(profile, arm, 0, run, data_paths=_data(tmp_path), progress=False)
    assert summary["global_step"] == 24 and is_trained(run)
    hist = json.loads((run / "log_history.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    parts = {"xval": ("ce", "mse"), "rt": ("ce", "ntl"), "rt+ntl": ("ce", "ntl"),
             "regression-head": ("mse",)}[arm]
    lam = parse_encoding_arm(arm).lam
    for h in hist:
        assert all(p in h for p in parts), h
        expected = {"xval": h.get("ce", 0) + h.get("mse", 0), "regression-head": h.get("mse", 0)}
        expected = expected.get(arm, h.get("ce", 0) + lam * h.get("ntl", 0))
        assert h["loss"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    cfg = json.loads((run / "train_config.json").read_text())
    assert cfg["kind"] == parse_encoding_arm(arm).kind and cfg["encoding"] == cfg["kind"]
    for folder in ("checkpoint-12", "final"):
        assert (run / folder / "model.safetensors").is_file() and (run / folder / "config.json").is_file()
    metrics = evaluate_run(run, progress=False)
    assert set(metrics) == {"valid", "extrapolate"} and is_evaluated(run, profile.eval_splits)
    rows = [json.loads(line) for line in (run / "eval" / "valid.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert set(rows[0]) == {"module", "question", "answer", "prediction", "parsed", "valid"}
    if arm in ("xval", "regression-head"):  # a value is always printed for these
        assert all(r["valid"] for r in rows if "NUM_" not in r["prediction"])
    # these arms decode only greedily: a sampling decoding falls back to greedy, and says so
    evaluate_run(run, splits=["valid"], decoding=Decoding("median-of-k", k=3), progress=False)
    fallback = run / "eval-median-of-3"
    assert (fallback / "valid.jsonl").read_text() == (run / "eval" / "valid.jsonl").read_text()
    used = json.loads((fallback / "decoding.json").read_text())
    assert (used["name"], used["requested"]) == ("greedy", "median-of-3")

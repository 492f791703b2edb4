"""`llamette chat` in a real pseudo-terminal (pexpect), and the sampling flags of `llamette run`."""

from __future__ import annotations

import re
import sys

import pexpect
import pytest

from llamette import cli

PERF = re.compile(r"\[perf\] prompt: (\d+) tokens evaluated \((\d+) reused from the cache\).*?context: (\d+)/")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _perf(child: pexpect.spawn) -> tuple[int, int, int]:
    child.expect(PERF, timeout=60)
    return tuple(int(x) for x in child.match.groups())


@pytest.mark.slow
def test_chat_in_a_terminal() -> None:
    child = pexpect.spawn(
        # --ignore-eos -n 300: every reply is long enough (~1 s) for a Ctrl-C to land inside it
        sys.executable, ["-m", "llamette", "chat", "--temp", "0", "-n", "300", "--ignore-eos", "--perf", "-c", "2048"],
        encoding="utf-8", timeout=60, dimensions=(40, 200),
    )  # fmt: skip
    try:
        child.expect("/exit")  # the help line
        child.expect("> ")
        child.sendline("My name is Ada. Remember it.")
        evaluated1, reused1, held1 = _perf(child)
        assert reused1 == 0 and evaluated1 > 10
        child.expect("> ")
        child.sendline("What is my name?")
        evaluated2, reused2, held2 = _perf(child)
        # the second turn evaluates only its own new text: the first turn comes from the KV cache
        assert reused2 >= evaluated1 and evaluated2 < 40 and held2 > held1
        child.expect("> ")
        # Ctrl-C during a long reply stops the reply, not the program
        child.sendline("Write a very long story about a dragon and a knight, with many chapters.")
        child.expect(r"chapters\.\r\n")  # the terminal's echo of the line
        child.expect(r"\S{2,}", timeout=60)  # the reply has started
        child.sendintr()
        child.expect(r"\(reply stopped\)")
        child.expect("> ")
        child.sendline("/clear")
        child.expect(r"\(conversation cleared\)")
        child.expect("> ")
        child.sendline("Hello")
        evaluated3, reused3, _ = _perf(child)
        assert evaluated3 < evaluated1 + 10 and reused3 < evaluated1  # a fresh conversation (the template prefix stays)
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


@pytest.mark.slow
def test_chat_ctrl_c_at_the_prompt_leaves() -> None:
    child = pexpect.spawn(sys.executable, ["-m", "llamette", "chat", "--temp", "0"], encoding="utf-8", timeout=60)
    try:
        child.expect("> ")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


@pytest.mark.slow
def test_seeded_cli_equals_api(capsys, smollm2_path) -> None:
    from llamette import Llama

    prompt = "Once upon a time"
    code, out, _ = run_cli(["run", "-p", prompt, "-n", "32", "--seed", "1234", "--no-display-prompt"], capsys)
    assert code == 0
    llm = Llama(model_path=str(smollm2_path), verbose=False, n_ctx=4096)
    api = llm(prompt, max_tokens=32, seed=1234)["choices"][0]["text"]
    assert out == api + "\n"
    # the other samplers through their flags, reproducible
    args = ["run", "-p", prompt, "-n", "24", "--seed", "9", "--top-k", "5", "--top-p", "0.8", "--min-p", "0.1",
            "--typical", "0.95", "--repeat-penalty", "1.2", "--repeat-last-n", "16", "--frequency-penalty", "0.2",
            "--presence-penalty", "0.1", "--no-display-prompt"]  # fmt: skip
    assert run_cli(args, capsys)[1] == run_cli(args, capsys)[1]
    for mirostat in ("1", "2"):
        args = ["run", "-p", prompt, "-n", "24", "--seed", "9", "--mirostat", mirostat, "--mirostat-lr", "0.2",
                "--mirostat-ent", "4", "--no-display-prompt"]  # fmt: skip
        first = run_cli(args, capsys)[1]
        assert first == run_cli(args, capsys)[1] and first.strip()


@pytest.mark.slow
def test_ignore_eos_logit_bias_and_reverse_prompt(capsys) -> None:
    code, out, err = run_cli(["run", "-p", "Hi", "-n", "40", "--temp", "0", "--ignore-eos", "-c", "24"], capsys)
    assert code == 0 and "stopped: context full" in err  # never ended by the model
    # ban the greedy first token: the text changes
    _, plain, _ = run_cli(["run", "-p", "The capital of France is", "-n", "1", "--temp", "0", "--no-display-prompt"],
                          capsys)  # fmt: skip
    paris = cli.main(["tokenize", "-p", plain.rstrip("\n"), "--ids", "--no-bos"])
    ids = eval(capsys.readouterr().out)
    assert paris == 0
    _, banned, _ = run_cli(["run", "-p", "The capital of France is", "-n", "1", "--temp", "0", "-l", f"{ids[0]}-inf",
                            "--no-display-prompt"], capsys)  # fmt: skip
    assert banned != plain
    code, out, err = run_cli(["run", "-p", "The first man to walk on the moon was", "-n", "30", "--temp", "0",
                              "-r", "Arm", "--no-display-prompt"], capsys)  # fmt: skip
    assert out == " Neil \n" and "stopped: stop string" in err


def test_sampling_flag_errors(capsys) -> None:
    for args, message in [
        (["--top-p", "1.5"], "expected a number from 0 to 1"),
        (["-l", "abc"], "TOKEN_ID"),
        (["--seed", "-7"], "-1 (random)"),
        (["--repeat-last-n", "-3"], "-1 (the context)"),
        (["--mirostat", "3"], "invalid choice"),
        (["-l", "99999999+1"], "logit_bias token 99999999"),
    ]:
        with pytest.raises(SystemExit) if message != "logit_bias token 99999999" else _no_exit():
            code = cli.main(["run", "-p", "x", "-n", "1", *args])
            assert code == 1
        assert message in capsys.readouterr().err, args


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_chat_template_errors(capsys) -> None:
    code = cli.main(["chat", "--chat-template", "nope"])
    assert code == 1 and "unknown chat template 'nope'" in capsys.readouterr().err

import subprocess
import sys

import pytest

from pdserve.types import SamplingParams

pytestmark = pytest.mark.slow


def test_generate_cli_streams_the_same_text_as_llm(make_llm):
    prompt = "The capital of France is"
    expected = make_llm("").generate([prompt], SamplingParams(max_tokens=12, temperature=0))[0]
    result = subprocess.run(
        [sys.executable, "-m", "pdserve", "generate", prompt, "--max-tokens", "12"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.text + "\n"
    assert expected.text.strip()

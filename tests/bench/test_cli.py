import json

import pytest

from pdserve.cli import main


def _serve(server, tmp_path, *extra):
    return main(
        ["bench", "serve", "--base-url", server.base_url, "--model", "fake",
         "--num-prompts", "6", "--random-input-len", "8", "--random-output-len", "4",
         "--vocab-size", "100", "--disable-tqdm", "--result-dir", str(tmp_path), *extra]
    )  # fmt: skip


def test_serve_writes_json_and_png(fake_server, tmp_path):
    server = fake_server(first_delay_s=0.01, token_delay_s=0.005)
    rc = _serve(server, tmp_path, "--save-result", "--result-filename", "r.json", "--plot",
                "--goodput", "ttft:1000", "tpot:500", "--gpu-cost-per-hour", "2.5")  # fmt: skip
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    s = result["summary"]
    assert (s["completed"], s["failed"], s["total_output_tokens"]) == (6, 0, 24)
    assert s["slo_attainment"] == 1.0 and s["cost_per_million_output_tokens"] > 0
    assert len(result["ttfts_s"]) == 6 and len(result["itls_s"]) == 18
    assert (tmp_path / "r-cdf.png").stat().st_size > 1000


def test_serve_against_a_failing_server_completes_and_reports(fake_server, tmp_path):
    server = fake_server(mode="drop")
    rc = _serve(server, tmp_path, "--save-result", "--result-filename", "f.json")
    assert rc == 1  # nothing succeeded
    s = json.loads((tmp_path / "f.json").read_text())["summary"]
    assert s["failed"] == 6 and s["completed"] == 0


def test_sweep_finds_the_best_rate_and_plots(fake_server, tmp_path):
    server = fake_server(first_delay_s=0.01, token_delay_s=0.0)
    rc = _serve(server, tmp_path, "--sweep-rates", "50,100", "--goodput", "ttft:2000",
                "--save-result", "--result-filename", "s.json", "--plot")  # fmt: skip
    assert rc == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["best_rate"] == 100 and len(result["points"]) == 2
    assert (tmp_path / "s-sweep.png").exists()
    out = tmp_path / "overlay.png"
    assert (
        main(["bench", "plot", str(tmp_path / "s.json"), str(tmp_path / "s.json"), "-o", str(out)])
        == 0
    )
    assert out.stat().st_size > 1000


def test_plot_overlays_serve_results(fake_server, tmp_path):
    server = fake_server(first_delay_s=0.0, token_delay_s=0.0)
    for name in ("a.json", "b.json"):
        assert _serve(server, tmp_path, "--save-result", "--result-filename", name) == 0
    out = tmp_path / "cmp.png"
    assert (
        main(["bench", "plot", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out)])
        == 0
    )
    assert out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--goodput", "ttft=5"], "argument --goodput: 'ttft=5': expected METRIC:MS"),
        (["--goodput", "itl:5"], "METRIC one of ttft, tpot, e2el"),
        (["--goodput", "ttft:-1"], "must be > 0"),
        (["--metric-percentiles", "50,x"], "argument --metric-percentiles"),
        (["--percentile-metrics", "ttft,foo"], "argument --percentile-metrics"),
        (["--dataset-name", "nope"], "argument --dataset-name: invalid choice"),
        (["--max-concurrency", "0"], "argument --max-concurrency"),
    ],
)
def test_bad_flags_name_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "serve", "--base-url", "http://x", "--model", "m", *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sweep-rates", "1,2"], "--sweep-rates needs --goodput"),
        (["--request-rate", "0"], "--request-rate must be > 0"),
        (["--goodput", "ttft:5", "ttft:6"], "--goodput names a metric twice"),
        (["--dataset-name", "trace"], "--dataset-path"),
    ],
)
def test_inconsistent_flags_are_refused_before_any_request(flags, message, capsys):
    rc = main(["bench", "serve", "--base-url", "http://x", "--model", "m", *flags])
    assert rc == 2 and message in capsys.readouterr().err


def test_bench_without_subcommand_prints_help(capsys):
    assert main(["bench"]) == 2
    assert "serve" in capsys.readouterr().out


def test_plot_refuses_a_file_that_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert main(["bench", "plot", str(bad), "-o", str(tmp_path / "o.png")]) == 2
    assert "not a pdserve bench result" in capsys.readouterr().err

"""benchmarks.train_speed's variants: what each flag asks to measure (no timing here)."""

import pytest

from benchmarks.train_speed import main, parser, variants


@pytest.mark.parametrize("argv, expected", [
    ([], [(False, False)]),
    (["--amp"], [(False, False), (False, True)]),
    (["--compile"], [(False, False), (True, False)]),
    (["--amp", "--compile", "default", "reduce-overhead"],
     [(False, False), (False, True), (True, False), (True, True),
      ("reduce-overhead", False), ("reduce-overhead", True)]),
    (["--no-eager", "--compile", "reduce-overhead"], [("reduce-overhead", False)]),
    (["--amp", "--no-eager", "--compile"], [(True, False), (True, True)]),
    (["--amp-only", "--no-eager", "--compile", "reduce-overhead"], [("reduce-overhead", True)]),
    (["--amp-only"], [(False, True)]),
])
def test_variants(argv, expected):
    assert variants(parser().parse_args(argv)) == expected


def test_no_eager_without_compile_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--no-eager"])
    assert "--no-eager needs --compile" in capsys.readouterr().err

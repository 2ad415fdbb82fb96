"""The shipped udev rules pass, and the checker rejects each class of mistake."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pointd.terminal.udev_rules import check_rules
from pointd.terminal.vendors import DEFAULT_VENDORS

RULES = Path(__file__).resolve().parents[2] / "udev" / "68-pointd.rules"

GOOD = 'SUBSYSTEM=="tty", ATTRS{serial}=="X1", SYMLINK+="pointd/register", MODE="0660"\n'


def rules_text() -> str:
    return RULES.read_text(encoding="utf-8")


def test_shipped_rules_pass_the_checker() -> None:
    report = check_rules(rules_text())
    assert report.ok, [str(problem) for problem in report.problems]
    assert len(report.rules) > 10


def test_shipped_rules_sort_before_modemmanager_and_libmtp() -> None:
    number = int(RULES.name.split("-", 1)[0])
    assert 60 < number < 69  # after 60-serial, before 69-libmtp, 77-mm-* and 80-mm-*


def test_shipped_rules_cover_every_default_vendor() -> None:
    text = rules_text()
    matched = {int(v, 16) for v in re.findall(r'ATTR\{idVendor\}=="([0-9a-f]{4})"', text)}
    assert matched == DEFAULT_VENDORS.vendor_ids()
    assert 'ATTR{idVendor}=="18d1", ATTR{idProduct}=="2d0[0-5]"' in text


def test_shipped_rules_make_the_promised_names_and_flags() -> None:
    tokens = [t for rule in check_rules(rules_text()).rules for t in rule.tokens]
    assigned = {(t.key, t.attribute, t.operator, t.value) for t in tokens if t.is_assignment}
    assert ("SYMLINK", None, "+=", "pointd/register") in assigned
    assert ("SYMLINK", None, "+=", "pointd/terminal-$attr{serial}") in assigned
    assert ("ENV", "ID_MM_DEVICE_IGNORE", "=", "1") in assigned
    assert ("ENV", "MTP_NO_PROBE", "=", "1") in assigned
    assert ("TAG", None, "+=", "systemd") in assigned
    assert {t.value for t in tokens if t.key == "MODE"} == {"0660"}
    assert {t.value for t in tokens if t.key == "GROUP"} == {"pointd"}
    assert 'ATTRS{serial}=="POINTD-REGISTER-SERIAL"' in rules_text()


def test_good_rule_passes() -> None:
    assert check_rules(GOOD + "# comment\n\n").ok


def test_continuation_lines_join_into_one_rule() -> None:
    report = check_rules('SUBSYSTEM=="tty", \\\n  ATTRS{serial}=="X1", \\\n  MODE="0660"\n')
    assert report.ok
    assert len(report.rules) == 1
    assert report.rules[0].line == 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('SUBSYSTEM=="tty", MODE=="0660"\n', "comparison here, not an assignment"),
        ('SUBSYSTEM="tty", MODE="0660"\n', "can only be compared"),
        ('ATTRS{serial}="X", MODE="0660"\n', "can only be compared"),
        ('SUBSYSTEM=="tty", ENV{ID_MM_DEVICE_INORE}="1"\n', "did you mean ID_MM_DEVICE_IGNORE"),
        ('SUBSYSTEM=="tty", ENV{MTP_NO_PROBES}="1"\n', "not in the allow-list"),
        ('SUBSYSTEM=="tty" MODE="0660"\n', "missing comma"),
        ('SUBSYSTEM=="tty", MODE="0660",\n', "trailing comma"),
        ('SUBSYSTEM=="tty", MODE="0660\n', "unterminated"),
        ("SUBSYSTEM=='tty', MODE=\"0660\"\n", "double quotes, not '"),
        ('SUBSYSTEM==tty, MODE="0660"\n', "must be in double quotes"),
        ('SUBSYSTEM=="tty", SYMLINKS+="x"\n', "unknown key 'SYMLINKS' (did you mean SYMLINK?)"),
        ('SUBSYSTEM=="tty", MODE~"0660"\n', "missing or invalid operator"),
        ('SUBSYSTEM=="tty", ATTRS=="x", MODE="0660"\n', "needs an {attribute}"),
        ('SUBSYSTEM{x}=="tty", MODE="0660"\n', "takes no {attribute}"),
        ('SUBSYSTEM=="tty", MODE="0666"\n', "opens the device to every user"),
        ('SUBSYSTEM=="tty", MODE="660"\n', "not 4 octal digits"),
        ('SUBSYSTEM=="tty", MODE="0980"\n', "not 4 octal digits"),
        ('SUBSYSTEM=="tty", GOTO="nowhere"\n', "has no LABEL"),
        ('LABEL="lonely"\n', "never jumped to"),
        ('SUBSYSTEM=="tty", ATTRS{serial}=="X"\n', "only matches and changes nothing"),
        ('=="tty", MODE="0660"\n', "expected a key"),
    ],
)
def test_checker_rejects_each_class_of_mistake(text: str, fragment: str) -> None:
    report = check_rules(text)
    assert not report.ok
    assert any(fragment in str(problem) for problem in report.problems), [
        str(problem) for problem in report.problems
    ]


def test_problems_name_the_line_where_the_rule_starts() -> None:
    text = GOOD + "\n# note\n" + 'SUBSYSTEM=="tty", \\\n  MODE=="0660"\n'
    (problem,) = [p for p in check_rules(text).problems if "comparison" in p.message]
    assert problem.line == 4
    assert str(problem).startswith("line 4:")


@pytest.mark.parametrize(
    "mistake",
    [
        ('MODE="0660"', 'MODE=="0660"'),
        ("ENV{ID_MM_DEVICE_IGNORE}", "ENV{ID_MM_DEVICE_INORE}"),
        ('GROUP="pointd", MODE', 'GROUP="pointd" MODE'),
        ('GOTO="pointd_terminal"\nGOTO', 'GOTO="pointd_termnal"\nGOTO'),
    ],
)
def test_a_mistake_slipped_into_the_shipped_file_is_caught(mistake: tuple[str, str]) -> None:
    before, after = mistake
    text = rules_text()
    assert before in text
    assert not check_rules(text.replace(before, after, 1)).ok


def _udevadm_verify_available() -> str | None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return None
    probe = subprocess.run(
        [udevadm, "verify", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return udevadm if probe.returncode == 0 else None


def test_udevadm_verify_accepts_the_shipped_rules() -> None:
    udevadm = _udevadm_verify_available()
    if udevadm is None:
        pytest.skip(
            "udevadm verify needs systemd/udev >= 254 (Debian 12 ships 252, or udevadm is "
            "absent); the checker above covers syntax, keys, operators and ENV names"
        )
    done = subprocess.run(
        [udevadm, "verify", "--resolve-names=never", str(RULES)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

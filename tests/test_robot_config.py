"""Robot configs: the shipped ones load; each kind of bad input fails at load time, precisely."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.robot_config import ROBOTS_DIR, ConfigError, load_robot_config

ROBOTS = sorted(p.stem for p in ROBOTS_DIR.glob("*.yaml"))


def test_both_profiles_ship() -> None:
    assert {"furuta", "arm2"} <= set(ROBOTS)


@pytest.mark.parametrize("name", ROBOTS)
def test_shipped_config_loads(name: str) -> None:
    cfg = load_robot_config(name)
    assert cfg.name == name
    assert cfg.actuated_joints
    for fidelity in ("twin", "reduced", "reduced_gap"):
        assert cfg.model_path(fidelity).is_file()


def test_load_by_path_equals_load_by_name() -> None:
    assert load_robot_config(ROBOTS_DIR / "furuta.yaml") == load_robot_config("furuta")


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _furuta() -> dict:
    return yaml.safe_load((ROBOTS_DIR / "furuta.yaml").read_text())


def _error(tmp_path: Path, data: object) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_robot_config(path)
    msg = str(info.value)
    assert str(path) in msg, "the error must name the file"
    return msg


def test_unknown_key_is_named(tmp_path: Path) -> None:
    data = _furuta()
    data["serial"]["baud_rate"] = 9600
    msg = _error(tmp_path, data)
    assert "serial.baud_rate" in msg and "unknown key" in msg


def test_wrong_type_is_named(tmp_path: Path) -> None:
    data = _furuta()
    data["control_rate_hz"] = "fast"
    msg = _error(tmp_path, data)
    assert "control_rate_hz" in msg and "'fast'" in msg


def test_missing_field_is_named(tmp_path: Path) -> None:
    data = _furuta()
    del data["actuation"]["max_command_change"]
    msg = _error(tmp_path, data)
    assert "actuation.max_command_change" in msg and "missing" in msg


def test_out_of_range_value_is_named(tmp_path: Path) -> None:
    data = _furuta()
    data["serial"]["timeout_s"] = -1.0
    msg = _error(tmp_path, data)
    assert "serial.timeout_s" in msg and "greater than 0" in msg


def test_nested_list_path_is_named(tmp_path: Path) -> None:
    data = _furuta()
    data["joints"][1]["velocity_limit"] = 0
    msg = _error(tmp_path, data)
    assert "joints.1.velocity_limit" in msg


def test_inverted_limits_rejected(tmp_path: Path) -> None:
    data = _furuta()
    data["joints"][0]["soft_limits"] = {"lower": 1.0, "upper": -1.0}
    assert "must be < upper" in _error(tmp_path, data)


def test_soft_limits_outside_hard_limits_rejected(tmp_path: Path) -> None:
    data = _furuta()
    data["joints"][0]["soft_limits"] = {"lower": -3.0, "upper": 2.0}
    assert "inside hard_limits" in _error(tmp_path, data)


def test_reset_naming_unknown_joint_rejected(tmp_path: Path) -> None:
    data = _furuta()
    data["reset"]["home"]["wrist"] = 0.0
    assert "wrist" in _error(tmp_path, data)


def test_missing_model_file_rejected(tmp_path: Path) -> None:
    data = _furuta()
    data["models"]["twin"] = "nope.xml"
    assert "nope.xml" in _error(tmp_path, data)


def test_voltage_actuation_needs_command_limit(tmp_path: Path) -> None:
    data = _furuta()
    del data["actuation"]["command_limit"]
    assert "command_limit" in _error(tmp_path, data)


def test_not_a_mapping_rejected(tmp_path: Path) -> None:
    assert "mapping" in _error(tmp_path, ["a", "list"])


def test_invalid_yaml_rejected(tmp_path: Path) -> None:
    path = tmp_path / "robot.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_robot_config(path)


def test_missing_file_and_unknown_name() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_robot_config("/nonexistent/robot.yaml")
    with pytest.raises(ConfigError, match="known robots"):
        load_robot_config("no_such_robot")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mfpg_robot.cli", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_cli_prints_resolved_config() -> None:
    proc = _cli(str(ROBOTS_DIR / "furuta.yaml"))
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["name"] == "furuta"
    assert printed["serial"]["port"] == "/dev/ttyUSB0"  # a default, resolved


def test_check_config_cli_reports_errors_with_status_2(tmp_path: Path) -> None:
    data = _furuta()
    data["serial"]["baud_rate"] = 9600
    proc = _cli(str(_write(tmp_path, data)))
    assert proc.returncode == 2
    assert "serial.baud_rate" in proc.stderr


def _arm2() -> dict:
    return yaml.safe_load((ROBOTS_DIR / "arm2.yaml").read_text())


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("safety", "velocity_margin", 1.5, "less than or equal to 1"),
        ("safety", "brake_decel", 0.0, "greater than 0"),
        ("safety", "brake_decel", float("inf"), "finite number"),
        ("reset", "settle_velocity_tolerance", -0.5, "greater than 0"),
        ("reset", "max_settle_s", 0.5, "must be > settle_s"),
    ],
)
def test_bad_safety_and_reset_values_are_named(
    tmp_path: Path, section: str, key: str, value: float, expected: str
) -> None:
    data = _furuta()
    data[section][key] = value
    msg = _error(tmp_path, data)
    assert section in msg and expected in msg
    if "settle_s" not in expected:
        assert f"{section}.{key}" in msg


def test_bad_homing_gain_is_named(tmp_path: Path) -> None:
    data = _furuta()
    data["reset"]["homing_gains"]["kp"] = -12.0
    msg = _error(tmp_path, data)
    assert "reset.homing_gains.kp" in msg and "greater than 0" in msg


@pytest.mark.parametrize(("section", "key"), [("safety", "brake_decel"), ("reset", "homing_gains")])
def test_effort_robots_need_braking_and_homing_settings(
    tmp_path: Path, section: str, key: str
) -> None:
    data = _furuta()
    del data[section][key]
    assert f"actuation type 'voltage' needs {section}.{key}" in _error(tmp_path, data)


def test_servo_robots_refuse_effort_only_settings(tmp_path: Path) -> None:
    data = _arm2()
    data["safety"]["brake_decel"] = 25.0
    assert "safety.brake_decel applies to voltage/torque actuation only" in _error(tmp_path, data)
    data = _arm2()
    data["reset"]["homing_gains"] = _furuta()["reset"]["homing_gains"]
    assert "reset.homing_gains applies to voltage/torque actuation only" in _error(tmp_path, data)


def test_tuned_settings_are_read_from_the_yaml() -> None:
    furuta, arm2 = load_robot_config("furuta"), load_robot_config("arm2")
    gains = furuta.reset.homing_gains
    assert gains is not None and (gains.kp, gains.kd, gains.passive_damping) == (12.0, 1.0, -0.3)
    assert furuta.safety.brake_decel == 25.0 and furuta.safety.velocity_margin == 0.9
    assert arm2.safety.brake_decel is None and arm2.reset.homing_gains is None

"""``awen calibrate``: calibrate the simulated chip, print the fit per heater, optionally plot it.

The plot (``--plot FILE.png``, needs the ``plot`` extra: matplotlib) shows,
for every fitted heater, the photodiode readings of its sweep at the output
where it shows most, and the fitted model's curve through them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import trio

from actors.calibration._actor import sweep_data
from actors.calibration._fit import propagate
from protocol.calibration import Calibrate
from protocol.calibration_model import CalibrationModel
from protocol.memory import GetCalibration, GetPlan, QueryResults
from protocol.mesh import clements_layout
from protocol.plan import Plan
from protocol.results import powers_by_phase, procedure_plan_id
from runtime import open_system
from sim import parse_config

from .run import Display, _with_progress, prepare, source_lines, system_config, wait_started


async def calibrate(
    *, data_dir: Path, modes: int, seed: int, points: int | None, display: Display, verbose: bool
) -> dict[str, Any]:
    sim_config = parse_config({"modes": modes})
    factory = prepare(data_dir, sim_config, seed)
    config = system_config(data_dir, modes, seed, factory, verbose)
    display.say(f"awen: calibrating the simulated {modes}-mode chip (seed {seed}); data in {data_dir}")
    async with open_system(config) as sup:
        await wait_started(sup)

        async def work() -> Any:
            return await sup.request("calibration", Calibrate(points=points))

        with trio.fail_after(3600):
            result = await _with_progress(sup, display, "calibrating", "cal-", work)
        stored = await sup.request("memory", GetCalibration(device="chip", version=result.version))
        plan = (await sup.request("memory", GetPlan(plan=procedure_plan_id(result.job)))).body
        readings = (await sup.request("memory", QueryResults(job=result.job))).results
    powers = powers_by_phase(readings)
    return {"result": result, "stored": stored, "plan": plan, "powers": powers}


def table(outcome: dict[str, Any], stream: Any) -> None:
    result, stored = outcome["result"], outcome["stored"]
    layout = clements_layout(outcome["plan"].modes)
    phi0 = np.asarray(stored.fits.phi0)
    alpha = np.asarray(stored.fits.alpha)
    phi0_sigma = np.asarray(stored.uncertainties.phi0)
    alpha_sigma = np.asarray(stored.uncertainties.alpha)
    print(
        f"calibration version {result.version} of {result.device} (job {result.job}, {result.seconds:.1f} s): "
        f"residual {result.residual_rms:.2e}, reduced chi2 {result.reduced_chi2:.3f}",
        file=stream,
    )
    print(f"  {'heater':>6}  {'what':<38} {'phi0 (rad)':>20} {'alpha (rad/V^2)':>24}", file=stream)
    for h in range(layout.heater_count):
        what = layout.describe_heater(h)
        if phi0_sigma[h] < 0:
            print(f"  {h:>6}  {what:<38} {'not measurable by photodiodes':>45}", file=stream)
            continue
        print(
            f"  {h:>6}  {what:<38} {phi0[h]:>9.5f} +- {phi0_sigma[h]:<8.1e} {alpha[h]:>11.5f} +- "
            f"{alpha_sigma[h]:<8.1e}",
            file=stream,
        )
    for line in source_lines(stored.data):
        print(f"  {line}", file=stream)


def plot(outcome: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("awen: error: --plot needs matplotlib: pip install 'awen[plot]'") from None
    plan: Plan = outcome["plan"]
    stored = outcome["stored"]
    data = sweep_data(plan, outcome["powers"])
    model = CalibrationModel.from_fits(stored.version, stored.fits)
    scales = np.asarray(stored.data.output_scales)
    layout = clements_layout(plan.modes)
    heaters = stored.data.fitted_heaters
    first_pattern = data.inputs[0]
    cols = 8
    rows = (len(heaters) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), squeeze=False)
    points = stored.data.points
    for position, (ax, h) in enumerate(zip(axes.ravel(), heaters, strict=False)):
        mine = list(range(position * points, (position + 1) * points))  # the first input pattern's sweep of h
        v2 = data.volts[mine, h] ** 2
        measured = data.powers[mine]
        j = int(np.argmax(measured.max(axis=0) - measured.min(axis=0)))
        dense = np.linspace(0, v2.max(), 200)
        volts = np.zeros((len(dense), layout.heater_count))
        volts[:, h] = np.sqrt(dense)
        phases = np.array([model.phases_for(v) for v in volts])
        fields = propagate(layout, phases, np.repeat(first_pattern[None, :], len(dense), axis=0))
        curve = scales[j] * np.abs(fields[:, j]) ** 2
        ax.plot(dense, curve * 1e6, lw=1)
        ax.plot(v2, measured[:, j] * 1e6, "o", ms=3)
        ax.set_title(f"heater {h}, output {j}", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(heaters) :]:
        ax.axis("off")
    fig.suptitle(
        f"calibration version {stored.version}: photodiode power (uW) against V^2, points measured, lines fitted",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: Any) -> int:
    display = Display(sys.stderr, quiet=args.json)
    data_dir = Path(args.data_dir or "awen-data").absolute()
    outcome = trio.run(
        lambda: calibrate(
            data_dir=data_dir,
            modes=args.modes,
            seed=args.seed,
            points=args.points,
            display=display,
            verbose=args.verbose,
        )
    )
    if args.json:
        stored = outcome["stored"]
        fit = {"fits": stored.fits, "uncertainties": stored.uncertainties, "residuals": stored.residuals}
        print(json.dumps({"version": stored.version, **msgspec.to_builtins(fit)}))
    else:
        table(outcome, sys.stdout)
    if args.plot:
        plot(outcome, Path(args.plot))
        display.say(f"awen: wrote {args.plot}")
    return 0

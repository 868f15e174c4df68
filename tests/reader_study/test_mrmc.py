"""Reader-study (MRMC) analysis, ``cxrcore.eval.readers``, against published results.

The reference numbers are copied from output printed by the reference software and books (see each test's
docstring and ``tests/data/mrmc/README.md``); a value matches when it equals the printed number to the printed
digits (within half a unit of the last printed digit).
"""
from __future__ import annotations

import argparse
import ast
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.errors import ConfigError, CXRError, DataError
from cxrcore.eval.readers import (analyze, cases_needed, format_report, pilot_components, power, power_table,
                                  read_ratings, to_imrmc, to_long_csv)
from cxrcore.eval.readers.agreement import (default_cutoff, fleiss_kappa, kappa_binary, kappa_weighted, wilson)
from cxrcore.eval.readers.orh import fom_covariance, or_analysis, standalone

DATA = Path(__file__).resolve().parents[1] / "data" / "mrmc"
VD, FRANKEN, NICO, FED = DATA / "vandyke.csv", DATA / "franken.csv", DATA / "nico_cad.csv", DATA / "fed.csv"


def printed(value, text: str) -> None:
    """``value`` equals the printed number ``text`` to its printed digits (fixed or e-notation)."""
    mantissa, _, exp = text.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    tol = 0.5 * 10.0 ** (-decimals + (int(exp) if exp else 0))
    assert value is not None and abs(value - float(text)) <= tol * (1 + 1e-9), f"{value!r} is not {text} as printed"


@pytest.fixture(scope="module")
def vd() -> dict:
    return analyze(VD)


# ---------------------------------------------------------------- Van Dyke: OR-DBM MRMC 2.51 and the RJafroc book

def test_van_dyke_matches_or_dbm_mrmc_output(vd):
    """Van Dyke data (RJafroc ``dataset02``) against the output of OR-DBM MRMC 2.51 (Schartz, Hillis, Pesce &
    Berbaum, University of Iowa; build 20181028), trapezoidal AUC, jackknife covariance, as stored in RJafroc:
    https://github.com/dpc10ster/RJafroc/blob/master/tests/testthat/goodValues361/Iowa/VanDyke.txt
    ("2 treatments, 5 readers, 114 cases (69 normal, 45 abnormal) ... Covariance Estimation Method: Jackknifing").
    Every value below is copied from that file; treatments 1, 2 are modalities "0", "1" here."""
    r = vd
    aucs = {"0": ("0.91964573", "0.94782609"), "1": ("0.85877617", "0.90531401"), "2": ("0.90386473", "0.92173913"),
            "3": ("0.97310789", "0.99935588"), "4": ("0.82979066", "0.92995169")}
    for reader, (a0, a1) in aucs.items():
        printed(r["fom"]["0"][reader], a0)
        printed(r["fom"]["1"][reader], a1)
    printed(r["fom_mean"]["0"], "0.89703704")          # TREATMENT AUC MEANS
    printed(r["fom_mean"]["1"], "0.94083736")
    a, vc = r["anova"], r["variance_components"]
    printed(a["ss_t"], "0.00479617"), printed(a["ss_r"], "0.01534480"), printed(a["ss_tr"], "0.00220412")
    printed(a["ms_t"], "0.00479617"), printed(a["ms_r"], "0.00383620"), printed(a["ms_tr"], "0.00055103")
    printed(a["ms_r_each"]["0"], "0.00308263"), printed(a["ms_r_each"]["1"], "0.00130460")
    printed(vc["var_r"], "0.00153500"), printed(vc["var_tr"], "0.00020040")
    printed(vc["cov1"], "0.00034661"), printed(vc["rho1"], "0.43203138")
    printed(vc["cov2"], "0.00034407"), printed(vc["rho2"], "0.42886683")
    printed(vc["cov3"], "0.00023903"), printed(vc["rho3"], "0.29793328")
    printed(vc["var"], "0.00080229")

    # Analysis 1 (OR): random readers and random cases
    s = r["rrrc"]
    assert s["ndf"] == 1
    printed(s["f"], "4.46"), printed(s["p"], "0.0517"), printed(s["ddf"], "15.26")
    printed(s["error_term"], "0.00107626")
    d = s["diff"]["0 - 1"]
    printed(d["estimate"], "-0.04380"), printed(d["se"], "0.02075"), printed(d["df"], "15.26")
    printed(d["t"], "-2.11"), printed(d["p"], "0.0517")
    printed(d["ci"][0], "-0.08796"), printed(d["ci"][1], "0.00036")
    for m, (est, se, df, lo, hi, cov2) in {
            "0": ("0.89703704", "0.03317360", "12.74", "0.82522360", "0.96885048", "0.00048396"),
            "1": ("0.94083736", "0.02156637", "12.71", "0.89413783", "0.98753689", "0.00020419")}.items():
        e = s["per_modality"][m]
        printed(e["estimate"], est), printed(e["se"], se), printed(e["df"], df)
        printed(e["ci"][0], lo), printed(e["ci"][1], hi), printed(e["cov2"], cov2)

    # Analysis 2 (OR): fixed readers and random cases
    s = r["frrc"]
    printed(s["chi2"], "5.47595"), printed(s["p"], "0.0193")
    assert s["df"] == 1
    d = s["diff"]["0 - 1"]
    printed(d["se"], "0.01872"), printed(d["z"], "-2.34"), printed(d["p"], "0.0193")
    printed(d["ci"][0], "-0.08049"), printed(d["ci"][1], "-0.00711")
    for m, (se, lo, hi, var, cov2) in {"0": ("0.02428971", "0.84943008", "0.94464399", "0.00101410", "0.00048396"),
                                       "1": ("0.01677632", "0.90795637", "0.97371835", "0.00059047", "0.00020419")}.items():
        e = s["per_modality"][m]
        printed(e["se"], se), printed(e["ci"][0], lo), printed(e["ci"][1], hi)
        printed(e["var"], var), printed(e["cov2"], cov2)
    per_reader = {"0": ("-0.02818", "0.02551", "-1.10", "0.2693", "-0.07818", "0.02182", "0.00069890", "0.00037347"),
                  "1": ("-0.04654", "0.02630", "-1.77", "0.0768", "-0.09809", "0.00501", "0.00110605", "0.00076016"),
                  "2": ("-0.01787", "0.03121", "-0.57", "0.5668", "-0.07904", "0.04330", "0.00084234", "0.00035532"),
                  "3": ("-0.02625", "0.01729", "-1.52", "0.1290", "-0.06014", "0.00764", "0.00015058", "0.00000108"),
                  "4": ("-0.10016", "0.04406", "-2.27", "0.0230", "-0.18651", "-0.01381", "0.00121357", "0.00024304")}
    for reader, (est, se, z, p, lo, hi, var, cov1) in per_reader.items():
        e = s["per_reader"][reader]["0 - 1"]
        printed(e["estimate"], est), printed(e["se"], se), printed(e["z"], z), printed(e["p"], p)
        printed(e["ci"][0], lo), printed(e["ci"][1], hi)
        printed(vc["each_reader"][reader]["var"], var), printed(vc["each_reader"][reader]["cov1"], cov1)

    # Analysis 3 (OR): random readers and fixed cases
    s = r["rrfc"]
    printed(s["f"], "8.70"), printed(s["p"], "0.0420")
    assert (s["ndf"], s["ddf"]) == (1, 4)
    d = s["diff"]["0 - 1"]
    printed(d["se"], "0.01485"), printed(d["t"], "-2.95"), printed(d["p"], "0.0420")
    printed(d["ci"][0], "-0.08502"), printed(d["ci"][1], "-0.00258")
    for m, (ms, se, lo, hi) in {"0": ("0.00308263", "0.02482994", "0.82809808", "0.96597599"),
                                "1": ("0.00130460", "0.01615303", "0.89598936", "0.98568536")}.items():
        e = s["per_modality"][m]
        printed(e["ms_r"], ms), printed(e["se"], se), printed(e["ci"][0], lo), printed(e["ci"][1], hi)
        assert e["df"] == 4


def test_van_dyke_matches_the_rjafroc_book(vd):
    """The same data in Chakraborty's RJafroc book, chapter "Obuchowski Rockette Applications", section "Hand
    calculation" and "RJafroc: dataset02" (https://github.com/dpc10ster/RJafrocBook, docs/10C-or-analysis-
    applications.md at commit 135c42f1; online ORApplications.html), which prints some values with more digits:
    ``print(F_ORH_RRRC, digits = 4)`` "4.456", ``ddf`` "15.26", ``p`` "0.05167", ``CI_RRRC`` "-0.0879595
    0.0003589", the FRRC "Chisq 5.476 ... p 0.01928", "chi-square distribution observed value, 5.47595324" and
    "z ... -2.34" (its "-2.34007543" divides the rounded printed estimate and SE), the RRFC "F 8.704 p 0.04196",
    the FOM of trt0 / rdr1 "0.8587762" and RRRC ``ciAvgRdrEachTrt`` "DF 12.74 / 12.71", FRRC "StdErr 0.02429 /
    0.01678" and RRFC "StdErr 0.02483 / 0.01615"."""
    r = vd
    printed(r["fom"]["0"]["1"], "0.8587762")
    printed(r["rrrc"]["f"], "4.456"), printed(r["rrrc"]["ddf"], "15.26"), printed(r["rrrc"]["p"], "0.05167")
    lo, hi = r["rrrc"]["diff"]["0 - 1"]["ci"]
    printed(lo, "-0.0879595"), printed(hi, "0.0003589")
    printed(r["rrrc"]["per_modality"]["0"]["df"], "12.74"), printed(r["rrrc"]["per_modality"]["1"]["df"], "12.71")
    printed(r["frrc"]["chi2"], "5.476"), printed(r["frrc"]["p"], "0.01928")
    printed(r["frrc"]["chi2"], "5.47595324"), printed(r["frrc"]["diff"]["0 - 1"]["z"], "-2.34")
    printed(r["frrc"]["per_modality"]["0"]["se"], "0.02429"), printed(r["frrc"]["per_modality"]["1"]["se"], "0.01678")
    printed(r["rrfc"]["f"], "8.704"), printed(r["rrfc"]["p"], "0.04196")
    printed(r["rrfc"]["per_modality"]["0"]["se"], "0.02483"), printed(r["rrfc"]["per_modality"]["1"]["se"], "0.01615")
    printed(r["anova"]["ms_tr"], "5.51030622e-04")


def test_franken_matches_or_dbm_mrmc_output_where_cov2_is_below_cov3():
    """Franken data (RJafroc ``dataset03``) against OR-DBM MRMC 2.51's output as stored in RJafroc:
    https://github.com/dpc10ster/RJafroc/blob/master/tests/testthat/goodValues361/Iowa/Franken1.txt ("2
    treatments, 4 readers, 100 cases (33 normal, 67 abnormal)"). Here Cov2 < Cov3, so max(Cov2 - Cov3, 0) = 0:
    the RRRC error term is MS(T*R) alone and ddf = (t-1)(r-1) = 3 ("Error term 3.00 0.00005020")."""
    r = analyze(FRANKEN)
    for reader, (a0, a1) in {"0": ("0.85345997", "0.84961556"), "1": ("0.86499322", "0.84350972"),
                             "2": ("0.85730439", "0.84011759"), "3": ("0.81524197", "0.81433740")}.items():
        printed(r["fom"]["0"][reader], a0), printed(r["fom"]["1"][reader], a1)
    printed(r["fom_mean"]["0"], "0.84774989"), printed(r["fom_mean"]["1"], "0.83689507")
    a, vc = r["anova"], r["variance_components"]
    printed(a["ms_t"], "0.00023565"), printed(a["ms_r"], "0.00068406"), printed(a["ms_tr"], "0.00005020")
    printed(vc["var_r"], "0.00003776"), printed(vc["var_tr"], "-0.00071276")
    printed(vc["cov1"], "0.00079168"), printed(vc["cov2"], "0.00048364"), printed(vc["cov3"], "0.00051251")
    printed(vc["var"], "0.00152578"), printed(vc["rho3"], "0.33590059")
    s = r["rrrc"]
    printed(s["f"], "4.69"), printed(s["p"], "0.1188"), printed(s["ddf"], "3.00"), printed(s["error_term"], "0.00005020")
    d = s["diff"]["0 - 1"]
    printed(d["se"], "0.00501"), printed(d["ci"][0], "-0.00509"), printed(d["ci"][1], "0.02680")
    for m, (se, df, lo, hi) in {"0": ("0.02440215", "70.12", "0.79908282", "0.89641696"),
                                "1": ("0.02356642", "253.64", "0.79048429", "0.88330585")}.items():
        e = s["per_modality"][m]
        printed(e["se"], se), printed(e["df"], df), printed(e["ci"][0], lo), printed(e["ci"][1], hi)
    s = r["frrc"]
    printed(s["chi2"], "0.32101"), printed(s["p"], "0.5710")
    printed(s["diff"]["0 - 1"]["se"], "0.01916"), printed(s["diff"]["0 - 1"]["ci"][1], "0.04840")
    printed(s["per_modality"]["1"]["ci"][0], "0.78309680"), printed(s["per_modality"]["1"]["var"], "0.00152877")
    printed(s["per_reader"]["3"]["0 - 1"]["se"], "0.03481"), printed(s["per_reader"]["3"]["0 - 1"]["p"], "0.9793")
    s = r["rrfc"]
    printed(s["f"], "4.69"), printed(s["p"], "0.1188")
    printed(s["per_modality"]["0"]["se"], "0.01109801"), printed(s["per_modality"]["1"]["ci"][1], "0.86162818")


# The RJafroc book, chapter "Obuchowski Rockette Applications", section "RJafroc: dataset04" (docs/10C-or-analysis-
# applications.md at commit 135c42f1): ``st2 <- StSignificanceTesting(DfFroc2Roc(dataset04), FOM = "Wilcoxon",
# method = "OR"); print(st2, digits = 3)``, copied verbatim (trtI = modality "I"; rdr1..rdr4 = readers 1, 3, 4, 5).
FED_PRINTED = (DATA / "fed_rjafroc_printed.txt").read_text()


def _tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """The printed R data frames of ``text``: {"$NAME": {row: {column: printed value}}}."""
    out, name, cols = {}, None, None
    for line in text.strip().splitlines():
        if line.startswith("$"):
            name, cols = line.strip(), None
            out[name] = {}
        elif cols is None:
            cols = line.split()
        else:
            row, *values = line.split()
            out[name][row] = dict(zip(cols, values))
    return out


def test_five_modalities_match_the_rjafroc_book():
    """FED data as ROC (RJafroc ``DfFroc2Roc(dataset04)``): 5 modalities, so 10 pairs, each with its difference,
    interval and test, against the RJafroc book's printed output (FED_PRINTED above, plus from the same print:
    "$ANOVA$TRanova ... T 0.00759 4 0.001897 / R 0.02188 3 0.007294 / TR 0.00555 12 0.000462", "$ANOVA$VarCom
    VarR 1.28e-03, VarTR -1.09e-05, Cov1 2.95e-04 0.374, Cov2 2.33e-04 0.296, Cov3 2.12e-04 0.269, Var
    7.89e-04", "$RRRC$FTests Treatment 4.0 0.001897 3.47 0.0305 / Error 16.8 0.000547", "$FRRC$FTests Treatment
    0.001897 13.6 4 0.00868 / Error 0.000558", "$RRFC$FTests T 4 0.001897 4.1 0.0253")."""
    r = analyze(FED)
    t = _tables(FED_PRINTED)
    mods, readers = r["modalities"], r["readers"]
    assert mods == ["1", "2", "3", "4", "5"] and readers == ["1", "3", "4", "5"]
    for i, m in enumerate(mods):
        for j, rd in enumerate(readers):
            printed(r["fom"][m][rd], t["$FOMs$foms"][f"trt{m}"][f"rdr{j + 1}"])
    a, vc = r["anova"], r["variance_components"]
    printed(a["ss_t"], "0.00759"), printed(a["ss_r"], "0.02188"), printed(a["ss_tr"], "0.00555")
    printed(a["ms_t"], "0.001897"), printed(a["ms_r"], "0.007294"), printed(a["ms_tr"], "0.000462")
    printed(vc["var_r"], "1.28e-03"), printed(vc["var_tr"], "-1.09e-05"), printed(vc["var"], "7.89e-04")
    printed(vc["cov1"], "2.95e-04"), printed(vc["cov2"], "2.33e-04"), printed(vc["cov3"], "2.12e-04")
    printed(vc["rho1"], "0.374"), printed(vc["rho2"], "0.296"), printed(vc["rho3"], "0.269")
    s = r["rrrc"]
    assert s["ndf"] == 4
    printed(s["f"], "3.47"), printed(s["p"], "0.0305"), printed(s["ddf"], "16.8"), printed(s["error_term"], "0.000547")
    printed(r["frrc"]["chi2"], "13.6"), printed(r["frrc"]["p"], "0.00868"), printed(r["frrc"]["error_term"], "0.000558")
    assert r["frrc"]["df"] == 4
    printed(r["rrfc"]["f"], "4.1"), printed(r["rrfc"]["p"], "0.0253")
    assert (r["rrfc"]["ndf"], r["rrfc"]["ddf"]) == (4, 12)
    assert list(s["diff"]) == [f"{a} - {b}" for i, a in enumerate(mods) for b in mods[i + 1:]]
    for section, table, stat, pcol in (("rrrc", "$RRRC$ciDiffTrt", "t", "PrGTt"),
                                       ("frrc", "$FRRC$ciDiffTrt", "z", "PrGTz"),
                                       ("rrfc", "$RRFC$ciDiffTrt", "t", "PrGTt")):
        assert len(t[table]) == 10
        for row, v in t[table].items():
            d = r[section]["diff"][row.replace("trt", "").replace("-", " - ")]
            printed(d["estimate"], v["Estimate"]), printed(d["se"], v["StdErr"]), printed(d[stat], v[stat])
            printed(d["p"], v[pcol]), printed(d["ci"][0], v["CILower"]), printed(d["ci"][1], v["CIUpper"])
            if "DF" in v:
                printed(d["df"], v["DF"])
    for section, table in (("rrrc", "$RRRC$ciAvgRdrEachTrt"), ("frrc", "$FRRC$ciAvgRdrEachTrt"),
                           ("rrfc", "$RRFC$ciAvgRdrEachTrt")):
        for row, v in t[table].items():
            e = r[section]["per_modality"][row[3:]]
            printed(e["estimate"], v["Estimate"]), printed(e["se"], v["StdErr"])
            printed(e["ci"][0], v["CILower"]), printed(e["ci"][1], v["CIUpper"])
            if section != "frrc":      # RJafroc lists K - 1 for FRRC but uses the normal quantile, as OR-DBM MRMC
                printed(e["df"], v["DF"])
            if "Cov2" in v:
                printed(e["cov2"], v["Cov2"])
    for row, v in t["$FRRC$ciDiffTrtEachRdr"].items():
        rdr, pair = row.split("::")
        d = r["frrc"]["per_reader"][readers[int(rdr[3:]) - 1]][pair.replace("trt", "").replace("-", " - ")]
        printed(d["estimate"], v["Estimate"]), printed(d["se"], v["StdErr"]), printed(d["z"], v["z"])
        printed(d["p"], v["PrGTz"]), printed(d["ci"][0], v["CILower"]), printed(d["ci"][1], v["CIUpper"])


# ---------------------------------------------------------------- jackknife vs DeLong

def test_one_reader_jackknife_and_delong_match_the_rjafroc_book():
    """The first Van Dyke reader alone, in the RJafroc book, chapter "Obuchowski Rockette introduction"
    (docs/10A-or-analysis-introduction.md at commit 135c42f1; online ORMethodIntro.html): jackknife
    "Cov1_jk 0.0003734661 Var_jk 0.0006989006", DeLong "Cov_dl 0.0003684357 Var_dl 0.0006900766"; FRRC
    "ORJack.Chisq 1.2201111 ... P.val 0.26933885", "ORDeLong.Chisq 1.2345017 ... P.val 0.26653335"; and the
    first-principles table "theta_1 0.91964573 theta_2 0.94782609 ... MS_T 0.00039706618 F_1R 1.2201111 pValue
    0.26933885 Lower -0.078183215 Mid -0.028180354 Upper 0.021822507". One reader: FRRC applies, RRRC and RRFC
    do not (None, with a note)."""
    df = pd.read_csv(VD, dtype=str)
    one = df[df["reader"] == "0"]
    jk = analyze(one)
    printed(jk["variance_components"]["cov1"], "0.0003734661"), printed(jk["variance_components"]["var"], "0.0006989006")
    printed(jk["fom"]["0"]["0"], "0.91964573"), printed(jk["fom"]["1"]["0"], "0.94782609")
    printed(jk["anova"]["ms_t"], "0.00039706618")
    printed(jk["frrc"]["chi2"], "1.2201111"), printed(jk["frrc"]["p"], "0.26933885")
    d = jk["frrc"]["diff"]["0 - 1"]
    printed(d["ci"][0], "-0.078183215"), printed(d["estimate"], "-0.028180354"), printed(d["ci"][1], "0.021822507")
    dl = analyze(one, covariance="delong")
    printed(dl["variance_components"]["cov1"], "0.0003684357"), printed(dl["variance_components"]["var"], "0.0006900766")
    printed(dl["frrc"]["chi2"], "1.2345017"), printed(dl["frrc"]["p"], "0.26653335")
    for r in (jk, dl):
        assert r["rrrc"]["f"] is None and r["rrrc"]["diff"] == {} and r["rrfc"]["f"] is None
        assert any("only one reader" in n and "FRRC" in n for n in r["notes"])
        json.dumps(r, allow_nan=False)


def test_delong_covariance_is_delongs_and_close_to_the_jackknife(vd):
    """DeLong's OR components are the averages of :func:`cxrcore.eval.delong.delong_covariance`'s matrix, and
    (as for the Wilcoxon AUROC they should be) close to the jackknife's; the whole analysis runs with either."""
    from cxrcore.eval.delong import delong_covariance

    study = read_ratings(VD)
    dl = analyze(study, covariance="delong")
    _, c = delong_covariance(study.truth, study.ratings.reshape(10, -1))
    c = c.reshape(2, 5, 2, 5)
    assert dl["variance_components"]["var"] == pytest.approx(np.mean([c[i, j, i, j] for i in range(2) for j in range(5)]))
    assert dl["variance_components"]["cov1"] == pytest.approx(np.mean([c[0, j, 1, j] for j in range(5)]))
    assert dl["variance_components"]["cov3"] == pytest.approx(
        np.mean([c[i, j, 1 - i, k] for i in range(2) for j in range(5) for k in range(5) if j != k]))
    for key in ("var", "cov1", "cov2", "cov3"):
        assert dl["variance_components"][key] == pytest.approx(vd["variance_components"][key], rel=0.02)
    assert dl["fom"] == vd["fom"] and dl["anova"]["ms_t"] == vd["anova"]["ms_t"]
    assert dl["rrrc"]["p"] == pytest.approx(vd["rrrc"]["p"], abs=0.002) and dl["rrrc"]["ddf"] != vd["rrrc"]["ddf"]
    json.dumps(dl, allow_nan=False)


def test_jackknife_leave_one_out_aurocs_are_exact():
    """The fast jackknife (from DeLong's structural components) equals recomputing each AUROC without a case."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = np.array([0] * 7 + [1] * 5)
    s = rng.integers(1, 6, size=(3, 12)).astype(float)
    _, cov = fom_covariance(y, s, "jackknife")
    jk = np.array([[roc_auc_score(np.delete(y, k), np.delete(row, k)) for k in range(12)] for row in s])
    d = jk - jk.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(cov, 11 / 12 * d @ d.T, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- readers vs a standalone model

def test_readers_vs_cad_match_the_rjafroc_book_standalone_chapter():
    """NICO data (RJafroc ``dataset09``: CAD and nine radiologists, 200 mammograms) against the RJafroc book,
    chapter "Standalone CAD vs. Radiologists" (docs/20-standalone-cad.md at commit 135c42f1; online
    standalone-cad-radiologists.html), Tables 2 and 3, row "Wilcoxon": theta_0 8.17e-01, theta_bullet 8.49e-01,
    psi_bullet 3.17e-02; 1T-RRRC: CI_psi (-3.1e-02, 9.45e-02), F 9.86e-01, ddf 8.78e+02, p 3.2e-01, sigma_R^2
    8.78e-04, Cov2 9.24e-04, Var 1.4e-03; 1T-RRFC: CI_theta_bullet (8.26e-01, 8.71e-01), CI_psi (8.96e-03,
    5.45e-02), F 1.03e+01, ddf 8e+00, p 1.24e-02; 2T-RRRC: CI_theta_0 (7.52e-01, 8.82e-01), CI_theta_bullet
    (8.07e-01, 8.9e-01). The method implemented is 1T-RRRC; the model's own interval (its jackknife variance)
    is the 2T-RRRC column's, the readers' interval the single-modality RRRC one."""
    r = analyze(NICO, model_reader="CAD")
    st = r["standalone"]["1"]
    printed(st["model_auroc"]["estimate"], "8.17e-01"), printed(st["reader_mean_auroc"], "8.49e-01")
    d = st["diff"]
    printed(d["estimate"], "3.17e-02"), printed(d["ci"][0], "-3.1e-02"), printed(d["ci"][1], "9.45e-02")
    printed(d["f"], "9.86e-01"), printed(d["df"], "8.78e+02"), printed(d["p"], "3.2e-01")
    printed(st["var_r"], "8.78e-04"), printed(st["cov2"], "9.24e-04"), printed(st["var"], "1.4e-03")
    fc = st["fixed_case"]
    printed(fc["ci"][0], "8.96e-03"), printed(fc["ci"][1], "5.45e-02")
    printed(fc["f"], "1.03e+01"), printed(fc["p"], "1.24e-02")
    assert fc["df"] == 8
    printed(st["model_auroc"]["estimate"] + fc["ci"][0], "8.26e-01")
    printed(st["model_auroc"]["estimate"] + fc["ci"][1], "8.71e-01")
    printed(st["model_auroc"]["ci"][0], "7.52e-01"), printed(st["model_auroc"]["ci"][1], "8.82e-01")
    ci = r["rrrc"]["per_modality"]["1"]["ci"]
    printed(ci[0], "8.07e-01"), printed(ci[1], "8.9e-01")
    assert r["readers"] == [f"rad{j}" for j in range(1, 10)] and r["model"] == "CAD"
    assert r["rrrc"]["f"] is None and any("one modality" in n for n in r["notes"])
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("covariance", ["jackknife", "delong"])
def test_standalone_equals_the_replicated_model_two_modality_analysis(covariance):
    """The book's finding: entering the model as a second "modality" read identically by every reader slot gives
    the same F, ddf and p as the single-treatment analysis of reader-minus-model differences (but variance
    components without meaning: its Var(R) is 0). Table 3 of the chapter prints that analysis' components for the
    Wilcoxon FOM: Cov1 2.62e-04, Cov2 7.24e-04, Cov3 2.62e-04, Var 9.62e-04, sigma_TR^2 2.01e-04 (jackknife)."""
    s = read_ratings(NICO, model_reader="CAD")
    R, K = s.ratings.shape[1:]
    both = np.stack([np.broadcast_to(s.model, (R, K)), s.ratings[0]])
    aucs, cov = fom_covariance(s.truth, both.reshape(2 * R, K), covariance)
    two = or_analysis(aucs.reshape(2, R), cov, ["CAD", "RAD"], list(s.readers))
    one = standalone(s.truth, s.ratings[0], s.model, list(s.readers), covariance)
    assert two["rrrc"]["f"] == pytest.approx(one["diff"]["f"], rel=1e-9)
    assert two["rrrc"]["ddf"] == pytest.approx(one["diff"]["df"], rel=1e-9)
    assert two["rrrc"]["p"] == pytest.approx(one["diff"]["p"], rel=1e-9)
    assert abs(two["variance_components"]["var_r"]) < 1e-15
    if covariance == "jackknife":
        vc = two["variance_components"]
        printed(vc["cov1"], "2.62e-04"), printed(vc["cov2"], "7.24e-04"), printed(vc["cov3"], "2.62e-04")
        printed(vc["var"], "9.62e-04"), printed(vc["var_tr"], "2.01e-04")


def test_standalone_with_one_reader_gives_per_reader_differences_only():
    df = pd.read_csv(NICO, dtype=str)
    r = analyze(df[df["reader"].isin(["CAD", "rad3"])], model_reader="CAD")
    st = r["standalone"]["1"]
    assert st["diff"] is None and st["fixed_case"] is None
    e = st["per_reader"]["rad3"]
    assert e["estimate"] == pytest.approx(r["fom"]["1"]["rad3"] - st["model_auroc"]["estimate"])
    assert e["ci"][0] < e["estimate"] < e["ci"][1] and 0 < e["p"] < 1
    assert any("1T-RRRC" in n and "at least 2 readers" in n for n in r["notes"])
    json.dumps(r, allow_nan=False)


# ---------------------------------------------------------------- bad input

def _csv(tmp_path, text: str) -> Path:
    p = tmp_path / "ratings.csv"
    p.write_text(text)
    return p


GOOD = ("reader,modality,case,truth,rating\n"
        + "".join(f"{r},{m},c{k},{int(k >= 3)},{(k + j + i) % 5 + 1}\n"
                  for i, m in enumerate("AB") for j, r in enumerate(["R1", "R2"]) for k in range(6)))


def test_a_good_small_file_reads(tmp_path):
    s = read_ratings(_csv(tmp_path, GOOD))
    assert s.modalities == ("A", "B") and s.readers == ("R1", "R2") and s.cases == tuple(f"c{k}" for k in range(6))
    assert s.ratings.shape == (2, 2, 6) and list(s.truth) == [0, 0, 0, 1, 1, 1] and s.notes == ()


def test_headers_are_case_insensitive_treatment_is_modality_and_extra_columns_are_ignored(tmp_path):
    text = GOOD.replace("reader,modality,case,truth,rating", "Reader,TREATMENT,Case,Truth,Rating")
    text = "\n".join(line + (",x" if i else ",note") for i, line in enumerate(text.strip().split("\n"))) + "\n"
    s = read_ratings(_csv(tmp_path, text))
    assert s.modalities == ("A", "B") and s.ratings.shape == (2, 2, 6)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("truth,rating", "truth,score_x"), ["missing column rating", "reader, modality (or treatment)"]),
    (lambda t: t.replace("R1,A,c1,0,2", "R1,A,c1,0,high"), ["1 rating is not a number", "line 3: 'high'"]),
    (lambda t: t.replace("R1,A,c1,0,2", "R1,A,c1,2,2"), ["truth must be 0 (negative) or 1 (positive)", "line 3: '2'"]),
    (lambda t: t.replace("R2,B,c4,1,", "R2,B,c4,0,"), ["case 'c4': truth 0 on line 24, 1 on lines 6, 12, 18",
                                                       "give it the same 0/1 on every row"]),
    (lambda t: t + "R1,A,c0,0,5\n", ["combination appears more than once", "reader 'R1', modality 'A', case 'c0' on "
                                     "lines 2, 26", "keep one row of each"]),
    (lambda t: t.replace("R2,B,c5,1,3\n", "").replace("R2,B,c2,0,5\n", ""),
     ["not fully crossed", "reader 'R2' in modality 'B' lacks 2 of the 6 cases (c2, c5)", "add the missing ratings"]),
    (lambda t: t.replace(",1,", ",0,"), ["all 6 cases have truth 0 (negative)", "both kinds"]),
    (lambda t: t.replace("R1,A,c1,0,2", ",A,c1,0,2"), ["an empty reader (line 3)"]),
])
def test_bad_input_says_what_is_wrong_where_and_what_to_do(tmp_path, edit, expected):
    with pytest.raises(DataError) as err:
        read_ratings(_csv(tmp_path, edit(GOOD)))
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_more_than_ten_bad_rows_are_counted_not_all_listed(tmp_path):
    text = GOOD
    for k in range(6):
        for m in "AB":
            text = text.replace(f"R1,{m},c{k},{int(k >= 3)},", f"R1,{m},c{k},{int(k >= 3)},?")
    with pytest.raises(DataError) as err:
        read_ratings(_csv(tmp_path, text))
    msg = str(err.value)
    assert "12 ratings are not a number" in msg and "and 2 more" in msg and msg.count("line ") == 10


def test_one_modality_without_a_model_gives_what_still_applies(tmp_path):
    one = "\n".join(line for line in GOOD.strip().split("\n") if ",B," not in line) + "\n"
    r = analyze(_csv(tmp_path, one))
    assert r["modalities"] == ["A"] and r["rrrc"]["f"] is None and r["rrrc"]["diff"] == {}
    assert set(r["per_reader"]["A"]) == set(r["readers"]) and r["standalone"] is None
    assert any("only one modality ('A') and no model" in n and "--model-reader" in n for n in r["notes"])
    json.dumps(r, allow_nan=False)


def test_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="covariance"):
        analyze(_csv(tmp_path, GOOD), covariance="bootstrap")
    with pytest.raises(ConfigError, match="alpha"):
        analyze(_csv(tmp_path, GOOD), alpha=1.5)
    with pytest.raises(DataError, match="no such file"):
        read_ratings(tmp_path / "missing.csv")


def test_a_constant_reader_is_a_note_not_an_error(tmp_path):
    text = "".join(line[:line.rfind(",")] + ",2\n" if line.startswith("R2,A,") else line + "\n"
                   for line in GOOD.strip().split("\n"))
    r = analyze(_csv(tmp_path, text))
    assert r["fom"]["A"]["R2"] == 0.5
    assert any("reader 'R2' gave every case the same rating (2) in modality 'A'" in n and "0.5" in n for n in r["notes"])
    assert r["rrrc"]["f"] is not None
    json.dumps(r, allow_nan=False)
    assert "gave every case the same rating" in format_report(r)


def test_no_variability_gives_none_not_nan(tmp_path):
    """Perfectly separating readers: every AUROC 1, no variance; the tests are None with notes."""
    text = "".join(line[:line.rfind(",")] + f",{1 + 4 * int(line.split(',')[3])}\n" if i else line + "\n"
                   for i, line in enumerate(GOOD.strip().split("\n")))
    r = analyze(_csv(tmp_path, text))
    assert r["fom"] == {"A": {"R1": 1.0, "R2": 1.0}, "B": {"R1": 1.0, "R2": 1.0}}
    assert r["rrrc"]["f"] is None and r["frrc"]["chi2"] is None and r["rrfc"]["f"] is None
    assert r["rrrc"]["diff"]["A - B"]["ci"] == [None, None]
    assert any("RRRC" in n for n in r["notes"]) and any("FRRC" in n for n in r["notes"])
    json.dumps(r, allow_nan=False)
    assert "95% CI -" in format_report(r)


def test_model_reader_rows_are_checked(tmp_path):
    text = GOOD + "".join(f"M,A,c{k},{int(k >= 3)},{k / 10}\n" for k in range(6))
    s = read_ratings(_csv(tmp_path, text), model_reader="M")
    assert s.readers == ("R1", "R2") and list(s.model) == [k / 10 for k in range(6)]
    with pytest.raises(DataError, match="no rows for the model reader 'X'"):
        read_ratings(_csv(tmp_path, text), model_reader="X")
    with pytest.raises(DataError, match="model 'M' has no score for 1 of the 6 cases \\(c5\\)"):
        read_ratings(_csv(tmp_path, text.replace("M,A,c5,1,0.5\n", "")), model_reader="M")
    with pytest.raises(DataError, match="different scores for the same case"):
        read_ratings(_csv(tmp_path, text + "M,B,c0,0,0.9\n"), model_reader="M")


# ---------------------------------------------------------------- export

def test_long_csv_round_trip_gives_the_same_analysis(tmp_path, vd):
    study = read_ratings(VD)
    path = tmp_path / "long.csv"
    to_long_csv(study, path)
    again = read_ratings(path)
    assert (again.modalities, again.readers, again.cases) == (study.modalities, study.readers, study.cases)
    np.testing.assert_array_equal(again.ratings, study.ratings)
    np.testing.assert_array_equal(again.truth, study.truth)
    r = analyze(again)
    assert r["fom"] == vd["fom"] and r["rrrc"] == vd["rrrc"] and r["frrc"] == vd["frrc"] and r["rrfc"] == vd["rrfc"]
    assert path.read_text().splitlines()[:2] == ["reader,modality,case,truth,rating", "0,0,0,0,1"]


def test_long_csv_round_trip_keeps_the_model_and_exact_floats(tmp_path):
    text = GOOD + "".join(f"M,A,c{k},{int(k >= 3)},{0.1 * k + 1e-13}\n" for k in range(6))
    s = read_ratings(_csv(tmp_path, text), model_reader="M")
    again = read_ratings(io.StringIO(to_long_csv(s)), model_reader="M")
    np.testing.assert_array_equal(again.model, s.model)
    np.testing.assert_array_equal(again.ratings, s.ratings)


def test_imrmc_file_has_the_documented_structure(tmp_path):
    """iMRMC input (DIDSR/iMRMC, src/mrmc/core/InputFile.java; R package ``undoIMRMCdf``): header lines, the
    counts NR / N0 / N1 / NM at the start of their lines, ``BEGIN DATA:``, then ``readerID,caseID,modalityID,
    score`` rows: truth rows with readerID -1 and score 0/1, then every rating."""
    study = read_ratings(VD)
    path = tmp_path / "vd.imrmc"
    text = to_imrmc(study, path)
    assert path.read_text() == text
    lines = text.splitlines()
    begin = lines.index("BEGIN DATA:")
    head = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in lines[1:begin]}
    assert head == {"NR": "5", "N0": "69", "N1": "45", "NM": "2"}
    assert all(k not in lines[0].upper() for k in ("N0:", "N1:", "NR:", "NM:", "BEGIN DATA:"))
    rows = [ln.split(",") for ln in lines[begin + 1:]]
    assert all(len(r) == 4 and all(f == f.strip() and f for f in r) for r in rows)
    truth = [r for r in rows if r[0] == "-1"]
    data = [r for r in rows if r[0] != "-1"]
    assert len(truth) == 114 and {r[2] for r in truth} == {"truth"}
    assert {c: int(s) for _, c, _, s in truth} == dict(zip(study.cases, map(int, study.truth)))
    assert len(data) == 2 * 5 * 114
    back = {(r, m, c): float(s) for r, c, m, s in data}
    for i, m in enumerate(study.modalities):
        for j, r in enumerate(study.readers):
            for k, c in enumerate(study.cases):
                assert back[(r, m, c)] == study.ratings[i, j, k]


def test_imrmc_refuses_ids_it_would_mangle(tmp_path):
    with pytest.raises(ConfigError, match="reader 'R 1'"):
        to_imrmc(read_ratings(_csv(tmp_path, GOOD.replace("R1,", '"R 1",'))))
    with pytest.raises(ConfigError, match="'-1'"):
        to_imrmc(read_ratings(_csv(tmp_path, GOOD.replace("R1,", "-1,"))))


# ---------------------------------------------------------------- agreement

def test_cohen_kappa_by_hand_and_as_sklearn():
    """Two readers, ten cases: observed agreement 8/10, both call half positive, so chance agreement 0.5 and
    kappa = (0.8 - 0.5) / (1 - 0.5) = 0.6."""
    from sklearn.metrics import cohen_kappa_score

    a = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 0])
    b = np.array([1, 1, 0, 0, 0, 1, 1, 0, 1, 0])
    assert kappa_binary(a, b) == pytest.approx(0.6)
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = rng.integers(0, 2, 30), rng.integers(0, 2, 30)
        assert kappa_binary(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
        u, v = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
        assert kappa_weighted(u, v) == pytest.approx(
            cohen_kappa_score(u, v, labels=list(range(5)), weights="quadratic"), abs=1e-12)
    stack = np.stack([a, b])
    assert kappa_binary(stack, stack[::-1]).tolist() == pytest.approx([0.6, 0.6])
    assert np.isnan(kappa_binary(np.ones(5), np.ones(5)))


def test_fleiss_kappa_on_the_textbook_example():
    """The worked example of Fleiss' kappa (Wikipedia, "Fleiss' kappa", Worked example): 10 subjects, 14 raters,
    5 categories; P_bar = 0.378, P_e = 0.213, kappa = 0.210. With two raters and two categories Fleiss' kappa is
    Scott's pi: (p_o - p_e) / (1 - p_e) with p_e from the pooled shares."""
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    printed(float(fleiss_kappa(table)), "0.210")
    a = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 0])
    b = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 0])
    pos = a + b
    share = pos.sum() / 20
    scott = ((a == b).mean() - (share ** 2 + (1 - share) ** 2)) / (1 - (share ** 2 + (1 - share) ** 2))
    assert float(fleiss_kappa(np.stack([2 - pos, pos], axis=1))) == pytest.approx(scott)


def test_wilson_interval_and_default_cutoffs():
    lo, hi = wilson(8, 10)
    printed(lo, "0.4902"), printed(hi, "0.9433")          # 8/10, 95%: the textbook Wilson interval
    assert wilson(0, 0) == [None, None]
    assert default_cutoff(np.array([1, 2, 5]))[0] == 3
    assert default_cutoff(np.array([0.1, 0.93]))[0] == 0.5
    assert default_cutoff(np.array([0, 37, 100]))[0] == 50
    assert default_cutoff(np.array([-2.0, 7.5]))[0] is None


def test_agreement_section_of_the_analysis(vd):
    k, per = vd["kappa"], vd["per_reader"]
    assert k["cutoff"] == {r: 3.0 for r in vd["readers"]} and "1-5 scale" in k["cutoff_rule"]
    study = read_ratings(VD)
    calls = study.ratings >= 3
    pair = k["per_modality"]["0"]["cohen"]["0 ~ 1"]
    assert pair["kappa"] == pytest.approx(float(kappa_binary(calls[0, 0], calls[0, 1])))
    assert pair["ci"][0] < pair["kappa"] < pair["ci"][1]
    from sklearn.metrics import cohen_kappa_score

    assert pair["weighted_kappa"] == pytest.approx(cohen_kappa_score(
        study.ratings[0, 0], study.ratings[0, 1], labels=[1, 2, 3, 4, 5], weights="quadratic"), abs=1e-12)
    assert pair["weighted_ci"][0] < pair["weighted_kappa"] < pair["weighted_ci"][1]
    assert len(k["per_modality"]["1"]["cohen"]) == 10
    fl = k["per_modality"]["0"]["fleiss"]
    assert fl["ci"][0] < fl["kappa"] < fl["ci"][1] and fl["n_readers"] == 5
    row = per["1"]["3"]
    pos = study.truth == 1
    assert row["sensitivity"]["estimate"] == pytest.approx(calls[1, 3][pos].mean())
    assert row["specificity"]["estimate"] == pytest.approx((~calls[1, 3][~pos]).mean())
    assert row["auroc"]["estimate"] == pytest.approx(vd["fom"]["1"]["3"]) and row["auroc"]["method"] == "DeLong"
    again = analyze(study)           # the bootstrap is seeded: the same intervals every time
    assert again["kappa"] == k


def test_agreement_with_a_model_needs_its_threshold(tmp_path):
    text = GOOD + "".join(f"M,A,c{k},{int(k >= 3)},{k / 10}\n" for k in range(6))
    r = analyze(_csv(tmp_path, text), model_reader="M", n_boot=200)
    assert r["kappa"]["per_modality"]["A"]["model"] == {} and any("model threshold" in n for n in r["notes"])
    r = analyze(_csv(tmp_path, text), model_reader="M", model_threshold=0.25, n_boot=200)
    m = r["kappa"]["per_modality"]["A"]["model"]["R1"]
    calls = read_ratings(_csv(tmp_path, text), model_reader="M").ratings[0, 0] >= 3
    assert m["kappa"] == pytest.approx(float(kappa_binary(calls, np.arange(6) / 10 >= 0.25)))
    assert r["kappa"]["model"]["auroc"]["estimate"] == 1.0
    json.dumps(r, allow_nan=False)


# ---------------------------------------------------------------- sample size

def test_power_matches_rjafroc_for_the_van_dyke_pilot():
    """OR sample size (Hillis, Obuchowski & Berbaum 2011) for the Van Dyke pilot, against RJafroc's tests of
    ``SsPowerGivenJK(dataset02, FOM = "Wilcoxon", method = "OR", ...)`` in
    https://github.com/dpc10ster/RJafroc/blob/master/tests/testthat/test-SsSampleSizeRoc.R:
    effectSize -0.043800322, J = 10, K = 165: powerRRRC 0.80541995; K = 131, FRRC: 0.80091813; K = 53, RRFC:
    0.80496663; J = 6, K = 111 (observed effect): 0.5526116; ``SsSampleSizeKGivenJ(dataset02, J = 6)``: KRRRC
    251 and ``SsPowerTable``: "6 readers, 251 cases, power 0.801". And the RJafroc book's sample-size chapter
    "ROC-DBMH sample size using RJafroc" (docs/13-SampleSize3.md at commit ffdbccf3):
    ``SsPowerGivenJK(dataset02, J = 6, K = 112)``: "powerRRRC 0.556,
    ncpRRRC 4.8, ddfHRRRC 23.1, fRRRC 4.28 ... Expected power is 0.5555789", and for 10 readers "KRRRC 163 ...
    expected power 0.8015625" (identical under the OR and DBM formulations for this pilot)."""
    pilot = pilot_components(read_ratings(VD))
    assert (pilot.k_pilot, pilot.j_pilot) == (114, 5)
    d = -0.043800322
    printed(power(pilot, 10, 165, d)["power"], "0.80541995")
    printed(power(pilot, 10, 131, d, analysis="FRRC")["power"], "0.80091813")
    printed(power(pilot, 10, 53, d, analysis="RRFC")["power"], "0.80496663")
    printed(power(pilot, 6, 111, pilot.observed_effect)["power"], "0.5526116")
    p = power(pilot, 6, 112, pilot.observed_effect)
    printed(p["power"], "0.5555789"), printed(p["ncp"], "4.8"), printed(p["ddf"], "23.1"), printed(p["critical"], "4.28")
    k = cases_needed(pilot, 6, pilot.observed_effect)
    assert k["cases"] == 251
    printed(k["power"], "0.801")
    k = cases_needed(pilot, 10, pilot.observed_effect)
    assert k["cases"] == 163
    printed(k["power"], "0.8015625")


def test_power_matches_rjafroc_for_the_franken_pilot():
    """RJafroc test-SsSampleSizeRoc.R: ``SsSampleSizeKGivenJ(dataset03, FOM = "Wilcoxon", effectSize = 0.05,
    J = 6, method = "OR")``: powerRRRC 0.8004469 (at K = 121, the K of the legacy-code check beside it)."""
    k = cases_needed(pilot_components(read_ratings(FRANKEN)), 6, 0.05)
    assert k["cases"] == 121
    printed(k["power"], "0.8004469")


def test_power_behaves():
    pilot = pilot_components(read_ratings(VD))
    ps = [power(pilot, 5, k, 0.05)["power"] for k in (50, 100, 200, 400)]
    assert ps == sorted(ps) and 0 < ps[0] < ps[-1] < 1
    assert power(pilot, 5, 100, 0.05)["power"] == power(pilot, 5, 100, -0.05)["power"]
    table = power_table(pilot, 0.05, [3, 5])
    assert table[0]["RRRC"]["cases"] is None and table[0]["RRRC"]["power"] < 0.8    # 3 readers cannot reach 0.8
    assert table[1]["RRRC"]["cases"] == cases_needed(pilot, 5, 0.05)["cases"]
    k = table[1]["RRRC"]["cases"]
    assert power(pilot, 5, k, 0.05)["power"] >= 0.8 > power(pilot, 5, k - 1, 0.05)["power"]
    with pytest.raises(ConfigError, match="at least 2 readers"):
        power(pilot, 1, 100, 0.05)
    with pytest.raises(ConfigError, match="2 modalities"):
        df = pd.read_csv(VD, dtype=str)
        pilot_components(read_ratings(df[df["modality"] == "0"]))


# ---------------------------------------------------------------- the CLI

def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cxr`` with only the reader-study command, parsed and run as cxrcore.cli.main does."""
    from cxrcore.cli.common import CommandParser
    from cxrcore.cli.reader_study import READER_STUDY

    p = argparse.ArgumentParser(prog="cxr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    READER_STUDY.register(sub)
    a = p.parse_args(argv)
    try:
        rc = int(a.func(a) or 0)
    except CXRError as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        rc = 2
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_analyze_json_contract(capsys, tmp_path):
    rc, out, err = _cli(["reader-study", "analyze", str(VD), "--json", "--export-imrmc", str(tmp_path / "x.imrmc"),
                         "--export-long", str(tmp_path / "x.csv")], capsys)
    assert rc == 0
    r = json.loads(out)
    assert {"modalities", "readers", "fom", "rrrc", "frrc", "rrfc", "kappa"} <= set(r)
    assert r["modalities"] == ["0", "1"] and r["readers"] == ["0", "1", "2", "3", "4"]
    assert set(r["rrrc"]) >= {"f", "ndf", "ddf", "p", "diff", "per_modality"}
    assert set(r["rrrc"]["diff"]["0 - 1"]) >= {"estimate", "ci"} and len(r["rrrc"]["diff"]["0 - 1"]["ci"]) == 2
    assert set(r["rrrc"]["per_modality"]["0"]) >= {"estimate", "ci", "df"}
    assert set(r["frrc"]) >= {"chi2", "p"}
    printed(r["rrrc"]["f"], "4.456")
    assert (tmp_path / "x.imrmc").read_text().count("\n-1,") == 114
    assert read_ratings(tmp_path / "x.csv").ratings.shape == (2, 5, 114)
    assert "wrote the iMRMC input file" in err


def test_cli_analyze_text_report_and_options(capsys):
    rc, out, _ = _cli(["reader-study", "analyze", str(VD), "--covariance", "delong", "--alpha", "0.1",
                       "--cutoff", "4", "--n-boot", "100"], capsys)
    assert rc == 0
    for text in ("AUROC per reader and modality", "Random readers, random cases", "Fixed readers, random cases",
                 "Random readers, fixed cases", "Fleiss' kappa", "90% CI", "DeLong", "cut-off 4"):
        assert text in out, text
    rc, out, _ = _cli(["reader-study", "analyze", str(NICO), "--model-reader", "CAD", "--cutoff", "50",
                       "--model-threshold", "50", "--n-boot", "100"], capsys)
    assert rc == 0 and "Readers vs the standalone model 'CAD'" in out and "rad1 ~ model" in out


def test_cli_errors_exit_2_with_the_message(capsys, tmp_path):
    bad = _csv(tmp_path, GOOD.replace("R1,A,c1,0,2", "R1,A,c1,0,high"))
    rc, out, err = _cli(["reader-study", "analyze", str(bad)], capsys)
    assert rc == 2 and out == "" and "line 3: 'high'" in err and "Traceback" not in err
    rc, _, err = _cli(["reader-study", "analyze", str(VD), "--export-imrmc", str(tmp_path / "no" / "dir" / "x")],
                      capsys)
    assert rc == 2 and "cannot write the iMRMC input file" in err
    rc, _, err = _cli(["reader-study", "power", str(VD), "--readers", "x"], capsys)
    assert rc == 2 and "--readers" in err


def test_cli_power(capsys):
    rc, out, _ = _cli(["reader-study", "power", str(VD), "--effect", "0.05", "--readers", "5", "--power", "0.8",
                       "--json"], capsys)
    assert rc == 0
    r = json.loads(out)
    row = r["cases_needed"][0]
    assert row["readers"] == 5 and row["RRRC"]["cases"] == cases_needed(pilot_components(read_ratings(VD)), 5, 0.05)["cases"]
    rc, out, _ = _cli(["reader-study", "power", str(VD), "--readers", "6,10", "--cases", "111"], capsys)
    assert rc == 0 and "cases needed" in out and "251 (0.801)" in out and "observed in the pilot" in out


# ---------------------------------------------------------------- package hygiene

def test_readers_package_imports_only_numpy_scipy_pandas_and_lower_cxrcore():
    root = Path(__file__).resolve().parents[2] / "cxrcore" / "eval" / "readers"
    allowed = {"numpy", "scipy", "pandas", "__future__", "io", "math", "dataclasses", "pathlib", "typing",
               "itertools"}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    target = (node.module or "")
                    assert node.level == 1 or target in ("errors", "delong"), (path.name, node.level, target)
                    continue
                names = [node.module]
            else:
                continue
            for n in names:
                assert n.split(".")[0] in allowed, (path.name, n)


def test_format_report_mentions_every_note(vd):
    text = format_report(analyze(pd.read_csv(VD, dtype=str).query("reader == '0'")))
    assert "Notes" in text and "only one reader" in text

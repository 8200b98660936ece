package main

import (
	"fmt"
	"strings"
)

// renderCompetitorTargets writes the targets set against the competitors
// (issue 14), each measured against the ones that ran in this run: rows of
// the Targets table.
func renderCompetitorTargets(w func(string, ...any), r *report, us *contender) {
	competitors := ranCompetitors(r)

	// Time to 20 running on linked clones: at most half the best competitor's.
	mine, measured := findScale(r, us.Name, "linked", 0, 20)
	var best scaleResult
	for _, c := range competitors {
		if s, ok := findScale(r, c.Name, "linked", 0, 20); ok && s.Error == "" && (best.Contender == "" || s.Up < best.Up) {
			best = s
		}
	}
	switch {
	case !measured:
		w("| Time to 20 running (linked clones) ≤ 0.5× the best competitor's | not measured: no n = 20 in this run | — |\n")
	case len(competitors) == 0:
		w("| Time to 20 running (linked clones) ≤ 0.5× the best competitor's | not measured: no competitor ran in this run | — |\n")
	case mine.Error != "":
		w("| Time to 20 running (linked clones) ≤ 0.5× the best competitor's | ours failed: %s | **no** |\n", oneLine(mine.Error))
	case best.Contender == "":
		w("| Time to 20 running (linked clones) ≤ 0.5× the best competitor's | ours %.1f s; no competitor reached 20 running | yes |\n", mine.Up)
	default:
		ratio := mine.Up / best.Up
		w("| Time to 20 running (linked clones) ≤ 0.5× the best competitor's | %.2f× (ours %.1f s, %s %.1f s) | %s |\n",
			ratio, mine.Up, best.Contender, best.Up, yes(ratio <= 0.5))
	}

	// PVE requests per Update: never more than any competitor's at the same
	// size on the same cluster.
	worst, compared := 0.0, 0
	var worstAt string
	for _, results := range [][]apiCostResult{r.APICost, r.APICostNodes} {
		for _, a := range results {
			if a.Contender != us.Name || a.Error != "" {
				continue
			}
			for _, t := range results {
				if t.Contender == us.Name || t.N != a.N || t.Layout != a.Layout || t.Error != "" || t.RequestsPerUpdate <= 0 {
					continue
				}
				compared++
				if ratio := a.RequestsPerUpdate / t.RequestsPerUpdate; ratio > worst {
					worst, worstAt = ratio, fmt.Sprintf("N = %d, %s", t.N, t.Contender)
				}
			}
		}
	}
	if compared == 0 {
		w("| PVE requests per Update ≤ every competitor's at every N | not measured: no competitor's API cost in this run | — |\n")
	} else {
		w("| PVE requests per Update ≤ every competitor's at every N | ours ÷ theirs at most %.2f (%s) over %d comparisons | %s |\n",
			worst, worstAt, compared, yes(worst <= 1.0001))
	}

	// The fault comparison: nothing leaked and no crash for ours.
	var faultTexts []string
	clean := true
	for _, run := range []struct {
		label   string
		results []faultResult
	}{{"one node", r.Faults}, {"three nodes", r.FaultsNodes}} {
		for _, f := range run.results {
			if f.Contender != us.Name {
				continue
			}
			text := fmt.Sprintf("%s: %d VMs leaked, %d orphaned disks, %d crashes", run.label, len(f.LeakedVMs), f.OrphanedDisks, f.Crashes)
			if f.Error != "" {
				text += ", failed: " + oneLine(f.Error)
			}
			faultTexts = append(faultTexts, text)
			clean = clean && len(f.LeakedVMs) == 0 && f.OrphanedDisks == 0 && f.Crashes == 0 && f.Error == ""
		}
	}
	if len(faultTexts) == 0 {
		w("| Fault comparison: 0 leaks and 0 crashes for ours | not measured in this run | — |\n")
	} else {
		w("| Fault comparison: 0 leaks and 0 crashes for ours | %s | %s |\n", strings.Join(faultTexts, "; "), yes(clean))
	}

	// Idle RSS below the seed's.
	seed := findContenderKey(r, "seed")
	ours := findFootprint(r, us.Name)
	switch {
	case seed == nil:
		w("| Idle RSS below the seed's | not measured: the seed plugin was not given | — |\n")
	case ours == nil || ours.IdleRSSKB == 0:
		w("| Idle RSS below the seed's | not measured: no idle RSS of ours | — |\n")
	default:
		if theirs := findFootprint(r, seed.Name); theirs != nil && theirs.IdleRSSKB > 0 {
			w("| Idle RSS below the seed's | %s against %s | %s |\n", mib(ours.IdleRSSKB), mib(theirs.IdleRSSKB), yes(ours.IdleRSSKB < theirs.IdleRSSKB))
		} else {
			w("| Idle RSS below the seed's | not measured: no idle RSS of the seed | — |\n")
		}
	}
}

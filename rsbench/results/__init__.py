"""Result folders: the cell folder, scanning and status, the leaderboard, comparisons, tables, plots."""

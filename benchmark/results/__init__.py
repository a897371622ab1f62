"""Run records, predictions files, leaderboard."""

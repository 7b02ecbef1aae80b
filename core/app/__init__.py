"""What the Streamlit app needs beyond the stages, still without importing Streamlit: background jobs in
their own processes (``jobs``), the data views the pages show (``app_data``: which models and data
exist, their histories, evaluations, sample frames), the leaderboard (``leaderboard``) and the live race
(``race``: sessions, the AI, replays, videos and the WebSocket server). Pages import from here.
"""

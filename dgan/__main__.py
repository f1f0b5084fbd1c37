from dgan.cli import app

app()

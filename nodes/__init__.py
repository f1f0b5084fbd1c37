"""Node and generator processes: the programs behind `dgan node` and `dgan generator`."""

module github.com/merlin-ipvs/merlin

go 1.26.8

// The Go demo app of the lanemesh e2e scenarios (see ../README.md): an
// ordinary net/http service, standard library only.
module lanemesh.io/e2e/apps/go

go 1.22

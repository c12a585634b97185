package main

import (
	"net"
	"testing"
)

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIPAMAllocatesInOrderSkippingReserved(t *testing.T) {
	a, err := NewIPAM(mustCIDR(t, "10.244.0.0/24"), net.ParseIP("10.244.0.3"), net.ParseIP("192.168.1.1"))
	if err != nil {
		t.Fatal(err)
	}
	if g := a.Gateway().String(); g != "10.244.0.1" {
		t.Fatalf("gateway %s", g)
	}
	if a.PrefixLen() != 24 {
		t.Fatal(a.PrefixLen())
	}
	var got []string
	for i := 0; i < 3; i++ {
		ip, err := a.Allocate("p")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ip.String())
	}
	want := []string{"10.244.0.2", "10.244.0.4", "10.244.0.5"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	// A released address is not handed out again at once.
	a.Release(net.ParseIP("10.244.0.2"))
	ip, _ := a.Allocate("q")
	if ip.String() != "10.244.0.6" {
		t.Fatalf("got %s", ip)
	}
	if a.InUse() != 3 {
		t.Fatalf("in use %d", a.InUse())
	}
}

func TestIPAMExhaustionAndWrap(t *testing.T) {
	a, err := NewIPAM(mustCIDR(t, "10.0.0.0/29")) // .1 gateway, .2-.6 usable, .7 broadcast
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		ip, err := a.Allocate("p")
		if err != nil {
			t.Fatal(err)
		}
		s := ip.String()
		if s == "10.0.0.0" || s == "10.0.0.1" || s == "10.0.0.7" || seen[s] {
			t.Fatalf("bad address %s", s)
		}
		seen[s] = true
	}
	if _, err := a.Allocate("p"); err == nil {
		t.Fatal("expected exhaustion")
	}
	a.Release(net.ParseIP("10.0.0.3"))
	ip, err := a.Allocate("p")
	if err != nil || ip.String() != "10.0.0.3" {
		t.Fatalf("wrap: %v %v", ip, err)
	}
	if !a.Claim(net.ParseIP("10.0.0.3"), "p") || a.Claim(net.ParseIP("10.0.0.3"), "other") || a.Claim(net.ParseIP("10.0.0.1"), "x") {
		t.Fatal("claim semantics")
	}
}

func TestIPAMRejectsIPv6AndTinyNets(t *testing.T) {
	if _, err := NewIPAM(mustCIDR(t, "fd00::/64")); err == nil {
		t.Fatal("ipv6 accepted")
	}
	if _, err := NewIPAM(mustCIDR(t, "10.0.0.0/31")); err == nil {
		t.Fatal("/31 accepted")
	}
}

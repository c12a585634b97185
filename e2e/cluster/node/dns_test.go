package main

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var testDNS = DNSConfig{ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local",
	HostResolvConf: "# host\nnameserver 1.2.3.4\nsearch corp.example\noptions edns0\n"}

func podNS(ns, name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func TestResolvConfClusterFirst(t *testing.T) {
	got, err := ResolvConf(podNS("shop", "web"), testDNS)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.SplitN(got, "\n", 2)[1]
	want := "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if body != want {
		t.Fatalf("got\n%s\nwant\n%s", body, want)
	}
}

func TestResolvConfPolicies(t *testing.T) {
	p := podNS("a", "b")
	p.Spec.HostNetwork = true
	got, _ := ResolvConf(p, testDNS)
	if !strings.Contains(got, "nameserver 1.2.3.4") || strings.Contains(got, "10.96.0.10") {
		t.Fatalf("hostNetwork ClusterFirst uses the host's: %s", got)
	}
	p.Spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
	got, _ = ResolvConf(p, testDNS)
	if !strings.Contains(got, "nameserver 10.96.0.10") {
		t.Fatalf("ClusterFirstWithHostNet: %s", got)
	}
	p = podNS("a", "b")
	p.Spec.DNSPolicy = corev1.DNSDefault
	got, _ = ResolvConf(p, testDNS)
	if !strings.Contains(got, "search corp.example") || !strings.Contains(got, "options edns0") {
		t.Fatalf("Default: %s", got)
	}
	p.Spec.DNSPolicy = corev1.DNSNone
	if _, err := ResolvConf(p, testDNS); err == nil {
		t.Fatal("None without dnsConfig accepted")
	}
	two := "2"
	p.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"9.9.9.9"}, Searches: []string{"x.y"},
		Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}, {Name: "rotate"}}}
	got, _ = ResolvConf(p, testDNS)
	if !strings.Contains(got, "nameserver 9.9.9.9\nsearch x.y\noptions ndots:2 rotate\n") {
		t.Fatalf("None: %s", got)
	}
	p.Spec.DNSPolicy = corev1.DNSClusterFirst
	got, _ = ResolvConf(p, testDNS)
	if !strings.Contains(got, "nameserver 10.96.0.10\nnameserver 9.9.9.9\n") || !strings.Contains(got, "cluster.local x.y") || !strings.Contains(got, "options ndots:2 rotate") {
		t.Fatalf("ClusterFirst+dnsConfig: %s", got)
	}
}

func TestHostsFile(t *testing.T) {
	p := podNS("shop", "web-0")
	p.Spec.Subdomain = "web"
	p.Spec.HostAliases = []corev1.HostAlias{{IP: "1.1.1.1", Hostnames: []string{"foo", "bar"}}}
	got := HostsFile(p, "10.244.0.7", "cluster.local")
	for _, want := range []string{"127.0.0.1\tlocalhost\n", "10.244.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n", "1.1.1.1\tfoo\tbar\n"} {
		if !strings.Contains(got, want) {
			t.Fatalf("missing %q in\n%s", want, got)
		}
	}
	p = podNS("a", strings.Repeat("x", 70))
	if h := PodHostname(p); len(h) != 63 {
		t.Fatalf("hostname length %d", len(h))
	}
}

# The Kubernetes control plane the integration tests run against
# (tests/kubernetes_cluster.rs): kube-apiserver and kube-controller-manager
# from the k8s.io/kubernetes Go module, etcd from go.etcd.io/etcd, at the
# versions pinned in tools/kube/kubernetes/go.mod and tools/kube/etcd/go.mod.
#
#   make kube-bin   build them (once: the result is cached outside the
#                   repository, keyed by those versions) and print the
#                   directory that holds them
#
# Needs Go (1.24 or newer) and the Go module proxy; nothing prebuilt is
# downloaded. `make test` and `make bench` build them first.

.PHONY: kube-bin

kube-bin:
	@sh tools/kube/build.sh

package main

// pods/portforward, as kube-apiserver serves it: the request is authorized, the pod's node is
// looked up, and the connection is handed to the node's kubelet (its streaming endpoint
// /portForward/{namespace}/{pod}) by apimachinery's upgrade-aware proxy, which carries the
// WebSocket upgrade and then the bytes both ways. The kubelet is reached over plain HTTP on the
// address and port the Node reports (status.addresses InternalIP and
// status.daemonEndpoints.kubeletEndpoint.Port); a real API server shows the kubelet a client
// certificate, which the simulated node does not ask for.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
)

type portForwardREST struct {
	pods, nodes *genericregistry.Store
	authz       authorizer.Authorizer
}

var _ = rest.Connecter(&portForwardREST{})

func (r *portForwardREST) New() runtime.Object { return &corev1.Pod{} }
func (r *portForwardREST) Destroy()            {}

// NewConnectOptions: none decoded by the server; the query (ports=...) goes to the kubelet
// as it came, which is what kube's PodPortForwardOptions amount to.
func (r *portForwardREST) NewConnectOptions() (runtime.Object, bool, string) {
	return nil, false, ""
}

// ConnectMethods: POST for SPDY clients, GET for WebSocket ones (kube-rs, kubectl 1.31+).
func (r *portForwardREST) ConnectMethods() []string { return []string{"GET", "POST"} }

func (r *portForwardREST) Connect(ctx context.Context, name string, _ runtime.Object, responder rest.Responder) (http.Handler, error) {
	namespace := genericapirequest.NamespaceValue(ctx)
	obj, err := r.pods.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pod := obj.(*corev1.Pod)
	if pod.Spec.NodeName == "" {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("pod %s does not have a host assigned", name))
	}
	if pod.Status.Phase != corev1.PodRunning {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("pod %s is not running and cannot forward ports; current phase is %s", name, pod.Status.Phase))
	}
	obj, err = r.nodes.Get(genericapirequest.WithNamespace(ctx, ""), pod.Spec.NodeName, &metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		// The store names its errors after the request's resource (pods): say which is missing.
		return nil, apierrors.NewNotFound(corev1.Resource("nodes"), pod.Spec.NodeName)
	}
	if err != nil {
		return nil, err
	}
	node := obj.(*corev1.Node)
	port := node.Status.DaemonEndpoints.KubeletEndpoint.Port
	host := ""
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			host = a.Address
			break
		}
	}
	if host == "" || port == 0 {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("node %s reports no kubelet address (InternalIP %q, kubelet port %d)", node.Name, host, port))
	}
	location := url.URL{
		Scheme: "http",
		Host:   net.JoinHostPort(host, strconv.Itoa(int(port))),
		Path:   "/portForward/" + namespace + "/" + name,
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// kube 1.35 (AuthorizePodWebsocketUpgradeCreatePermission): a WebSocket upgrade is a GET,
		// authorized as "get", yet it opens the same stream a POST does: it needs "create" too.
		if wsstream.IsWebSocketRequest(req) {
			if err := r.mayCreate(req.Context(), namespace, name); err != nil {
				responder.Error(err)
				return
			}
		}
		target := location
		target.RawQuery = req.URL.RawQuery
		handler := proxy.NewUpgradeAwareHandler(&target, nil, false, true, proxy.NewErrorResponder(responder))
		handler.ServeHTTP(w, req)
	}), nil
}

func (r *portForwardREST) mayCreate(ctx context.Context, namespace, name string) error {
	u, ok := genericapirequest.UserFrom(ctx)
	if !ok {
		return apierrors.NewUnauthorized("no user")
	}
	decision, reason, err := r.authz.Authorize(ctx, authorizer.AttributesRecord{
		User: u, Verb: "create", Namespace: namespace, APIGroup: "", APIVersion: "v1",
		Resource: "pods", Subresource: "portforward", Name: name, ResourceRequest: true,
	})
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if decision != authorizer.DecisionAllow {
		return apierrors.NewForbidden(corev1.Resource("pods/portforward"), name,
			fmt.Errorf("User %q cannot create resource \"pods/portforward\" in namespace %q: %s", u.GetName(), namespace, reason))
	}
	return nil
}

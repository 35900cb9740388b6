package builder

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// NodeBuilder builds a Node.
type NodeBuilder struct{ node corev1.Node }

// MakeNode starts a node named name whose UID is its name.
func MakeNode(name string) *NodeBuilder {
	return &NodeBuilder{node: corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(name)}}}
}

// UID sets the node's UID.
func (n *NodeBuilder) UID(uid string) *NodeBuilder {
	n.node.UID = types.UID(uid)
	return n
}

// Obj returns the node.
func (n *NodeBuilder) Obj() *corev1.Node {
	return n.node.DeepCopy()
}
